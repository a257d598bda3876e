#include "test.h"

int test_failures;

int test_main(int argc, char **argv, const struct test_case *cases, size_t n)
{
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n; i++) printf("%s\n", cases[i].name);
        return 0;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE | --list\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(argv[1], cases[i].name) == 0) {
            cases[i].fn();
            if (test_failures) fprintf(stderr, "%s: %d check(s) failed\n", argv[1], test_failures);
            return test_failures ? 1 : 0;
        }
    fprintf(stderr, "no test case %s\n", argv[1]);
    return 2;
}
