/* What the three libFuzzer targets share: the entry point's prototype and the
 * invariant checks. A broken invariant aborts, which libFuzzer reports as a
 * crash and saves the input that caused it. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <sanitizer/asan_interface.h>

/* The entry point libFuzzer calls once per input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Both values are printed: a broken equality is easier to read that way. */
#define FUZZ_CHECK_EQ(a, b)                                                                        \
    do {                                                                                           \
        long long fuzz_a_ = (long long)(a), fuzz_b_ = (long long)(b);                              \
        if (fuzz_a_ != fuzz_b_) {                                                                  \
            fprintf(stderr, "%s:%d: invariant broken: %s == %s (%lld != %lld)\n", __FILE__,        \
                    __LINE__, #a, #b, fuzz_a_, fuzz_b_);                                           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
