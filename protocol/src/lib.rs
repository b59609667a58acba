//! The ptlens extensions to the Language Server Protocol, documented in `protocol/README.md`.
