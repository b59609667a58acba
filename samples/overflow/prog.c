/* ptlens-synth sample: a busy loop whose trace overflows the (simulated) internal buffer once.
 * Built with: gcc -g -O1 -o overflow prog.c; recorded with the options in synth-options. */
#include <stdio.h>
#include <string.h>

static unsigned hash(const char *s) {
    unsigned h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

int main(void) {
    static char sieve[4000];
    unsigned primes = 0, h = 0;
    memset(sieve, 1, sizeof sieve);
    for (unsigned i = 2; i < sizeof sieve; i++) {
        if (!sieve[i])
            continue;
        primes++;
        for (unsigned j = i * 2; j < sizeof sieve; j += i)
            sieve[j] = 0;
    }
    char word[16];
    for (unsigned i = 0; i < 100; i++) {
        snprintf(word, sizeof word, "w%u", i * primes);
        h ^= hash(word);
    }
    printf("primes=%u hash=%08x\n", primes, h);
    return 0;
}
