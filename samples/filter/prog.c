#include <stdio.h>

__attribute__((noinline)) static long helper(long x) {
    long s = 0;
    for (long i = 0; i < (x & 7) + 2; i++)
        s += i * x;
    return s;
}

__attribute__((noinline)) long hot(long n) {
    long acc = 0;
    for (long i = 0; i < n; i++) {
        if (i & 1)
            acc += helper(i);
        else
            acc ^= i;
    }
    return acc;
}

int main(void) {
    long total = 0;
    for (int k = 0; k < 60; k++)
        total += hot(k + 3);
    printf("%ld\n", total);
    return 0;
}
