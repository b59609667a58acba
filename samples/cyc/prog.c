/* ptlens-synth sample: one thread exercising every kind of control flow Intel PT reports.
 * Built with: gcc -g -O1 -o single-thread prog.c */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Recursion: direct calls and returns deeper than the 64-entry return stack. */
static int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

static unsigned depth(unsigned n) { return n == 0 ? 0 : 1 + depth(n - 1); }

/* A switch dense enough for a jump table: an indirect jump. */
static int classify(int c) {
    switch (c % 8) {
    case 0: return c * 3;
    case 1: return c + 7;
    case 2: return c ^ 0x55;
    case 3: return c - 11;
    case 4: return c << 2;
    case 5: return c >> 1;
    case 6: return ~c;
    default: return c * c;
    }
}

/* Function pointers: indirect calls. */
static int add(int a, int b) { return a + b; }
static int sub(int a, int b) { return a - b; }
static int mul(int a, int b) { return a * b; }
static int (*const ops[])(int, int) = {add, sub, mul};

/* A libc callback: qsort calls back into the program. */
static int cmp(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* A fault caught by a handler: an asynchronous transfer (FUP, TIP.PGD) into the handler. */
static sigjmp_buf recover;
static void on_segv(int sig) { (void)sig; siglongjmp(recover, 1); }

int main(int argc, char **argv) {
    int values[32];
    int acc = 0;
    (void)argv;
    for (int i = 0; i < 32; i++) {            /* a loop: conditional branches */
        values[i] = (i * 7919 + argc) % 101;
        if (values[i] & 1)                     /* if/else */
            acc += classify(values[i]);
        else
            acc -= ops[i % 3](values[i], i);
    }
    qsort(values, 32, sizeof values[0], cmp);
    acc += fib(12) + (int)depth(100);

    static char big[64 * 1024];                /* large enough for rep stos/movs in libc */
    memset(big, argc, sizeof big);
    acc += big[4095];

    signal(SIGSEGV, on_segv);
    if (sigsetjmp(recover, 1) == 0) {
        volatile int *nowhere = (int *)(long)(argc - 1);
        acc += *nowhere;                       /* faults: argc is 1 */
    } else {
        acc += 1000;
    }
    printf("acc=%d first=%d last=%d\n", acc, values[0], values[31]);
    return 0;
}
