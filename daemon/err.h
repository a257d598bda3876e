#pragma once
/* Errors are values: 0 for success, or a negative IDV_E* code from this one list.
 * The X-macro yields the enum, the symbolic name and the message. */

#define IDV_ERRNO_MAP(X)                                                                           \
    X(NOMEM, "out of memory")                                                                      \
    X(INVAL, "invalid argument")                                                                   \
    X(CONFIG, "configuration error")                                                               \
    X(IO, "input/output error")                                                                    \
    X(TIMEOUT, "deadline passed")                                                                  \
    X(DB, "database error")                                                                        \
    X(DBLOST, "database connection lost before the commit was confirmed")                          \
    X(UNAVAILABLE, "service unavailable")                                                          \
    X(TOOBIG, "too large")                                                                         \
    X(PARSE, "malformed input")                                                                    \
    X(NOTFOUND, "not found")                                                                       \
    X(CONFLICT, "conflict")                                                                        \
    X(UPSTREAM, "upstream error")                                                                  \
    X(SHUTDOWN, "shutting down")

enum idv_err {
    IDV_OK = 0,
#define IDV_ERR_ENUM(name, msg) IDV_E##name,
    IDV_E__FIRST = -1000,
    IDV_ERRNO_MAP(IDV_ERR_ENUM)
#undef IDV_ERR_ENUM
};

#define IDV_MUSTCHECK __attribute__((warn_unused_result))

/* Symbolic name of an error code ("IDV_ETIMEOUT"); static storage. */
const char *idv_err_name(int err);
/* Human message of an error code; static storage. */
const char *idv_strerror(int err);
