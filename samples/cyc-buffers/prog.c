/* Three threads doing distinguishable work, sharing a mutex-protected total: recorded per-CPU on two
 * virtual CPUs, so the threads migrate, preempt each other and block on the lock and in join. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long total;

static void add(long v)
{
	pthread_mutex_lock(&lock);
	total += v;
	pthread_mutex_unlock(&lock);
}

/* Counts primes below 1500 by trial division. */
static void *primes(void *arg)
{
	(void)arg;
	long n = 0;
	for (int i = 2; i < 1500; i++) {
		int p = 1;
		for (int d = 2; d * d <= i; d++)
			if (i % d == 0) {
				p = 0;
				break;
			}
		n += p;
		if (i % 250 == 0)
			add(n);
	}
	return (void *)n;
}

/* FNV-1a over a buffer, rewritten each round. */
static void *hash(void *arg)
{
	(void)arg;
	char buf[256];
	unsigned h = 2166136261u;
	for (int r = 0; r < 24; r++) {
		memset(buf, 'a' + r % 26, sizeof buf);
		for (size_t i = 0; i < sizeof buf; i++)
			h = (h ^ (unsigned char)buf[i]) * 16777619u;
		if (r % 6 == 0)
			add(h & 0xff);
	}
	return (void *)(long)h;
}

/* Collatz step counts, through a function pointer. */
static long step(long x) { return x % 2 ? 3 * x + 1 : x / 2; }

static void *collatz(void *arg)
{
	long (*f)(long) = arg;
	long steps = 0;
	for (long s = 1; s < 160; s++) {
		for (long x = s; x != 1; x = f(x))
			steps++;
		if (s % 40 == 0)
			add(steps);
	}
	return (void *)steps;
}

int main(void)
{
	pthread_t t[3];
	void *r[3];
	pthread_create(&t[0], NULL, primes, NULL);
	pthread_create(&t[1], NULL, hash, NULL);
	pthread_create(&t[2], NULL, collatz, (void *)step);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], &r[i]);
	printf("primes=%ld hash=%lx steps=%ld total=%ld\n", (long)r[0], (long)r[1], (long)r[2], total);
	return 0;
}
