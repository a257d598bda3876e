/* loadgen: the benchmark's HTTP/1.1 load generator (epoll, one thread).
 *
 * Three modes, all on keep-alive connections to one address:
 *  - closed loop (default): N connections, each sends its next request as soon
 *    as the previous answer is in: the maximum throughput. Latency is measured
 *    from the actual send.
 *  - open loop (--rate R): requests are due at a fixed average rate whatever
 *    happens to the answers (Poisson arrivals like pgbench -R, or evenly spaced
 *    with --uniform). A due request waits for a free connection if it must, and
 *    its latency counts from the time it was DUE, not from when it could be
 *    sent: a server that stalls is charged for every request it held back
 *    (no coordinated omission, as in wrk2). The generator's own lateness is
 *    measured apart (send_lag_ms): from the later of the due time and the
 *    moment a connection was free, to the send. A request that found every
 *    connection busy is counted (waited_for_connection): that wait is the
 *    server's, and is in its latency.
 *  - idle (--idle N): opens N connections, a few at a time, sends one request
 *    on each, then keeps them open and silent for --hold seconds (for the
 *    server's resident memory per idle connection).
 *
 * Request targets come from a file, one per line ("/path?query"). Answers are
 * counted per status and per "result" of their JSON body. The summary is one
 * JSON object on stdout; --spectrum writes the latency percentile spectrum.
 *
 * Latencies go into a log-bucketed histogram (HdrHistogram-like: 128 linear
 * sub-buckets per power of two of nanoseconds, so a value is known within
 * 1/128 of itself); percentiles report the bucket's upper edge.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define RBUF         2048 /* answers of the benchmark are a few hundred bytes */
#define WBUF         1024 /* request line and Host header */
#define MAX_LABELS   16
#define SUB_BITS     7
#define SUB_COUNT    (1u << SUB_BITS)
#define HIST_BUCKETS (SUB_COUNT + 40u * SUB_COUNT)
#define TIMER_TAG    UINT64_MAX

/* ---- histogram ------------------------------------------------------------ */

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total, max;
    double sum;
};

static unsigned hist_index(uint64_t v)
{
    if (v < SUB_COUNT) return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* e >= SUB_BITS */
    unsigned sub = (unsigned)(v >> (e - SUB_BITS)) - SUB_COUNT;
    unsigned idx = SUB_COUNT + (e - SUB_BITS) * SUB_COUNT + sub;
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* The largest value that falls in bucket idx. */
static uint64_t hist_upper(unsigned idx)
{
    if (idx < SUB_COUNT) return idx;
    unsigned e = (idx - SUB_COUNT) / SUB_COUNT + SUB_BITS;
    uint64_t sub = (idx - SUB_COUNT) % SUB_COUNT + SUB_COUNT;
    return ((sub + 1) << (e - SUB_BITS)) - 1;
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->total++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
}

/* Value at percentile p (0..100), in ns. */
static uint64_t hist_pct(const struct hist *h, double p)
{
    if (h->total == 0) return 0;
    if (p >= 100.0) return h->max;
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->total);
    if (want == 0) want = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t u = hist_upper(i);
            return u < h->max ? u : h->max;
        }
    }
    return h->max;
}

/* ---- state ---------------------------------------------------------------- */

enum cstate { C_CLOSED = 0, C_CONNECTING, C_IDLE, C_BUSY };

struct lconn {
    int fd;
    enum cstate st;
    uint64_t sent_at; /* when the request was written */
    uint64_t due;     /* when it was due (open loop), else sent_at */
    uint64_t free_at; /* when it last became free for a request */
    char w[WBUF];
    size_t wlen, woff;
    char r[RBUF];
    size_t rlen;
    unsigned idle_next; /* free stack link */
    bool in_stack;
    bool in_window; /* the request started inside the measured window */
    bool resend;    /* the request in w goes again once the new connection is up */
    bool retrying;  /* the request in flight is such a second sending */
};

struct opts {
    const char *host, *urls_path, *spectrum, *ready_file, *host_header;
    int port;
    unsigned conns;
    double duration, rate, hold;
    bool once, uniform;
    unsigned idle, ramp;
    uint64_t seed;
};

static struct opts O = {.host = "127.0.0.1",
                        .conns = 64,
                        .duration = 10,
                        .ramp = 64,
                        .hold = 5,
                        .seed = 0x9e3779b97f4a7c15ull};
static char **urls;
static size_t nurls;
static size_t next_url;
static bool urls_exhausted;
static struct lconn *C;
static int ep, tfd;
static struct sockaddr_in addr;
static struct hist H;
static struct hist LAG;                /* open loop: the generator's own lateness (see the top) */
static uint64_t waited_for_connection; /* open loop: due while no connection was free */
static uint64_t status_counts[600];
static struct {
    char name[24];
    uint64_t n;
} labels[MAX_LABELS];
static unsigned nlabels;
static uint64_t err_connect, err_lost, err_parse, reconnects, closed_while_idle, retried;
static uint64_t completed_in_window, completed_total, sent_total;
static uint64_t t0, t_end;
static volatile sig_atomic_t stop_flag;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* xorshift64*: the Poisson schedule needs a cheap, seeded generator. */
static uint64_t rng_state;
static double rng_unit(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t x = rng_state * 2685821657736338717ull;
    return ((double)(x >> 11) + 0.5) / 9007199254740992.0; /* (0, 1) */
}

/* ---- targets -------------------------------------------------------------- */

static void load_urls(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    size_t cap = 1024;
    urls = malloc(cap * sizeof *urls);
    if (!urls) die("malloc");
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    while ((n = getline(&line, &lcap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        if ((size_t)n > WBUF - 128) {
            fprintf(stderr, "loadgen: target longer than %d bytes in %s\n", WBUF - 128, path);
            exit(2);
        }
        if (nurls == cap) {
            cap *= 2;
            urls = realloc(urls, cap * sizeof *urls);
            if (!urls) die("realloc");
        }
        urls[nurls] = strdup(line);
        if (!urls[nurls]) die("strdup");
        nurls++;
    }
    free(line);
    fclose(f);
    if (nurls == 0) {
        fprintf(stderr, "loadgen: no targets in %s\n", path);
        exit(2);
    }
}

/* The next target, or NULL once every one was used (--once). */
static const char *take_url(void)
{
    if (next_url >= nurls) {
        if (O.once) {
            urls_exhausted = true;
            return NULL;
        }
        next_url = 0;
    }
    return urls[next_url++];
}

/* ---- connections ---------------------------------------------------------- */

static unsigned idle_top = UINT32_MAX; /* free stack of idle connections */
static unsigned n_idle, n_open, n_busy, n_connecting;

static void idle_push(unsigned i)
{
    if (C[i].in_stack) return;
    C[i].free_at = now_ns();
    C[i].in_stack = true;
    C[i].idle_next = idle_top;
    idle_top = i;
    n_idle++;
}

static unsigned idle_pop(void)
{
    unsigned i = idle_top;
    idle_top = C[i].idle_next;
    C[i].in_stack = false;
    n_idle--;
    return i;
}

static void set_state(unsigned i, enum cstate st)
{
    struct lconn *c = &C[i];
    if (c->st == C_BUSY) n_busy--;
    if (c->st == C_CONNECTING) n_connecting--;
    c->st = st;
    if (st == C_BUSY) n_busy++;
    if (st == C_CONNECTING) n_connecting++;
}

static void ep_mod(unsigned i, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.u64 = i};
    if (epoll_ctl(ep, op, C[i].fd, &ev) != 0) die("epoll_ctl");
}

static void conn_open(unsigned i)
{
    struct lconn *c = &C[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->rlen = c->woff = 0;
    if (!c->resend) c->wlen = 0;
    int r = connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
    if (r != 0 && errno != EINPROGRESS) die("connect");
    set_state(i, C_CONNECTING);
    n_open++;
    ep_mod(i, EPOLLOUT, EPOLL_CTL_ADD);
}

static void conn_drop(unsigned i)
{
    struct lconn *c = &C[i];
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        n_open--;
    }
    set_state(i, C_CLOSED);
}

static void became_idle(unsigned i);

/* Writes what is pending; false when the connection broke. */
static bool conn_flush(unsigned i)
{
    struct lconn *c = &C[i];
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->w + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                ep_mod(i, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
                return true;
            }
            return false;
        }
        c->woff += (size_t)n;
    }
    return true;
}

/* The connection broke. A request that had no byte of its answer yet went out
 * while the server was closing the connection for being idle (its header or
 * idle deadline; at a fixed rate the connections at the bottom of the free
 * stack sit unused for seconds): the keep-alive race every HTTP client meets,
 * which clients and proxies answer by sending the request again on a new
 * connection (RFC 9112, 9.3.1; these GETs are idempotent and replays are
 * deduplicated). It is sent again once, keeping its due and send times, so the
 * wait is charged to its latency, and counted as "retried"; any other broken
 * request counts as lost. */
static void lost(unsigned i)
{
    struct lconn *c = &C[i];
    bool retry = false;
    if (c->st == C_BUSY) {
        if (c->rlen == 0 && !c->retrying && !stop_flag) {
            retry = true;
            retried++;
        } else {
            err_lost++;
        }
    }
    conn_drop(i);
    c->resend = retry;
    if (!stop_flag) {
        reconnects++;
        conn_open(i);
    }
}

static void send_request(unsigned i, const char *url, uint64_t due)
{
    struct lconn *c = &C[i];
    int n = snprintf(c->w, sizeof c->w, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", url,
                     O.host_header ? O.host_header : O.host);
    c->wlen = (size_t)n;
    c->woff = 0;
    c->retrying = false;
    c->sent_at = now_ns();
    c->due = due ? due : c->sent_at;
    if (due) {
        uint64_t ready = due > c->free_at ? due : c->free_at;
        if (c->free_at > due) waited_for_connection++;
        hist_add(&LAG, c->sent_at > ready ? c->sent_at - ready : 0);
    }
    c->in_window = c->sent_at < t_end;
    set_state(i, C_BUSY);
    sent_total++;
    if (!conn_flush(i)) lost(i);
}

static void count_label(const char *s, size_t n)
{
    if (n >= sizeof labels[0].name) n = sizeof labels[0].name - 1;
    for (unsigned k = 0; k < nlabels; k++)
        if (strlen(labels[k].name) == n && memcmp(labels[k].name, s, n) == 0) {
            labels[k].n++;
            return;
        }
    if (nlabels == MAX_LABELS) return;
    memcpy(labels[nlabels].name, s, n);
    labels[nlabels].name[n] = '\0';
    labels[nlabels++].n = 1;
}

static void classify(const char *body, size_t len)
{
    static const char key[] = "\"result\":\"";
    const char *p = len ? memmem(body, len, key, sizeof key - 1) : NULL;
    if (!p) {
        count_label("(none)", 6);
        return;
    }
    p += sizeof key - 1;
    const char *q = memchr(p, '"', (size_t)(body + len - p));
    if (!q) {
        count_label("(none)", 6);
        return;
    }
    count_label(p, (size_t)(q - p));
}

/* Parses complete answers in the read buffer. Returns -1 on a framing error,
 * 1 when the server asked to close, else 0. */
static int parse_answers(unsigned i, uint64_t now)
{
    struct lconn *c = &C[i];
    for (;;) {
        if (c->rlen == 0) return 0;
        char *end = memmem(c->r, c->rlen, "\r\n\r\n", 4);
        if (!end) return c->rlen >= RBUF ? -1 : 0;
        size_t head = (size_t)(end - c->r) + 4;
        if (c->rlen < 12 || memcmp(c->r, "HTTP/1.", 7) != 0) return -1;
        int status = atoi(c->r + 9);
        if (status < 100 || status > 599) return -1;
        size_t clen = 0;
        bool close_it = c->r[7] == '0';
        /* Header lines start after each LF up to the empty line at end + 2;
         * the CRLFs bound every comparison inside the buffer. */
        for (const char *lf = memchr(c->r, '\n', head); lf && lf + 1 < end + 2;
             lf = memchr(lf + 1, '\n', (size_t)(end + 4 - (lf + 1)))) {
            const char *l = lf + 1;
            if (strncasecmp(l, "content-length:", 15) == 0) clen = strtoul(l + 15, NULL, 10);
            if (strncasecmp(l, "connection:", 11) == 0) {
                const char *v = l + 11;
                while (*v == ' ') v++;
                close_it = strncasecmp(v, "close", 5) == 0;
            }
        }
        if (head + clen > RBUF) return -1;
        if (c->rlen < head + clen) return 0;
        if (c->st != C_BUSY) return -1; /* an answer nobody asked for */
        status_counts[status]++;
        classify(c->r + head, clen);
        hist_add(&H, now - c->due);
        completed_total++;
        if (c->in_window && now <= t_end) completed_in_window++;
        set_state(i, C_IDLE);
        memmove(c->r, c->r + head + clen, c->rlen - head - clen);
        c->rlen -= head + clen;
        if (close_it) return 1;
        became_idle(i);
        if (c->st != C_IDLE) return 0; /* it sent the next request */
    }
}

/* ---- scheduling ----------------------------------------------------------- */

static uint64_t next_due;    /* open loop: when the next request is due */
static uint64_t interval_ns; /* mean spacing */

static void schedule_advance(void)
{
    double gap = O.uniform ? (double)interval_ns : -log(rng_unit()) * (double)interval_ns;
    next_due += (uint64_t)gap;
}

static void arm_timer(uint64_t at)
{
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(at / 1000000000u);
    its.it_value.tv_nsec = (long)(at % 1000000000u);
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0) die("timerfd_settime");
}

/* Open loop: sends every request that is due while a connection is free. */
static void open_loop_pump(void)
{
    uint64_t now = now_ns();
    while (next_due <= now && now < t_end && idle_top != UINT32_MAX && !stop_flag) {
        unsigned i = idle_pop();
        if (C[i].st != C_IDLE) continue; /* dropped meanwhile */
        const char *u = take_url();
        if (!u) {
            idle_push(i);
            break;
        }
        send_request(i, u, next_due);
        schedule_advance();
    }
    if (next_due < t_end && now < t_end && idle_top != UINT32_MAX) arm_timer(next_due);
}

static void became_idle(unsigned i)
{
    uint64_t now = now_ns();
    if (O.idle) return; /* idle mode: one request per connection, then silence */
    if (O.rate > 0) {
        idle_push(i);
        return;
    }
    if (now >= t_end || stop_flag || t0 == 0) {
        if (t0 == 0) idle_push(i);
        return;
    }
    const char *u = take_url();
    if (u) send_request(i, u, 0);
}

/* ---- the loop ------------------------------------------------------------- */

static void on_event(unsigned i, uint32_t ev)
{
    struct lconn *c = &C[i];
    if (c->st == C_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err || (ev & (EPOLLERR | EPOLLHUP))) {
            err_connect++;
            if (c->resend) err_lost++;
            c->resend = false;
            conn_drop(i);
            return;
        }
        if (c->resend) { /* the request a closing server did not answer, again */
            set_state(i, C_BUSY);
            c->woff = 0;
            c->resend = false;
            c->retrying = true; /* a second failure is a loss */
            if (!conn_flush(i)) {
                lost(i);
                return;
            }
            ep_mod(i, c->woff == c->wlen ? EPOLLIN : EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
            return;
        }
        set_state(i, C_IDLE);
        ep_mod(i, EPOLLIN, EPOLL_CTL_MOD);
        if (O.idle) {
            send_request(i, urls[0], 0);
            return;
        }
        became_idle(i);
        return;
    }
    if (ev & EPOLLOUT) {
        if (!conn_flush(i)) {
            lost(i);
            return;
        }
        if (c->woff == c->wlen) ep_mod(i, EPOLLIN, EPOLL_CTL_MOD);
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        for (;;) {
            if (c->rlen >= RBUF) {
                err_parse++;
                lost(i);
                return;
            }
            ssize_t n = recv(c->fd, c->r + c->rlen, RBUF - c->rlen, 0);
            if (n < 0) {
                if (errno == EAGAIN) return;
                if (c->st == C_IDLE) closed_while_idle++;
                lost(i);
                return;
            }
            if (n == 0) {
                if (c->st == C_IDLE) closed_while_idle++;
                lost(i);
                return;
            }
            c->rlen += (size_t)n;
            int r = parse_answers(i, now_ns());
            if (r < 0) {
                err_parse++;
                lost(i);
                return;
            }
            if (r == 1) { /* Connection: close: a fresh connection takes over */
                conn_drop(i);
                if (!stop_flag && !O.idle) {
                    reconnects++;
                    conn_open(i);
                }
                return;
            }
            if (c->st != C_BUSY && c->rlen == 0) return;
        }
    }
}

static void run_loop(bool (*until)(void))
{
    struct epoll_event evs[64];
    while (!until()) {
        int timeout = 100;
        int n = epoll_wait(ep, evs, 64, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 == TIMER_TAG) {
                uint64_t x;
                if (read(tfd, &x, sizeof x) < 0 && errno != EAGAIN) die("read timerfd");
                continue;
            }
            on_event((unsigned)evs[k].data.u64, evs[k].events);
            /* Open loop: a long run of answers must not hold back requests
             * that fall due meanwhile (their lateness would count). */
            if (O.rate > 0 && t0 && (k & 7) == 7) open_loop_pump();
        }
        if (O.rate > 0 && t0) open_loop_pump();
    }
}

static unsigned ramp_started;

static bool all_connected(void)
{
    if (stop_flag) return true;
    if (O.idle) {
        /* A few connections at a time: each connects, asks once, then idles. */
        while (ramp_started < O.idle && n_connecting + n_busy < O.ramp) conn_open(ramp_started++);
        return ramp_started == O.idle && n_connecting == 0 && n_busy == 0;
    }
    return n_connecting == 0;
}

static bool window_over(void)
{
    uint64_t now = now_ns();
    if (stop_flag) return true;
    if (urls_exhausted && n_busy == 0) return true;
    if (O.rate > 0 && next_due >= t_end && n_busy == 0) return true;
    return now >= t_end && n_busy == 0;
}

static uint64_t drain_deadline;
static bool drained(void)
{
    return n_busy == 0 || now_ns() >= drain_deadline || stop_flag;
}

static uint64_t hold_until;
static bool hold_over(void)
{
    return stop_flag || now_ns() >= hold_until;
}

/* ---- output --------------------------------------------------------------- */

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void write_spectrum(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) die(path);
    fprintf(f, "# percentile latency_ms 1/(1-p)\n");
    for (double x = 0; x <= 5.0001; x += 0.05) {
        double p = 100.0 * (1.0 - pow(10.0, -x));
        fprintf(f, "%.5f %.4f %.2f\n", p, ms(hist_pct(&H, p)), pow(10.0, x));
    }
    fprintf(f, "100 %.4f 1000000\n", ms(H.max));
    fclose(f);
}

static void print_summary(double window_s, const char *mode)
{
    printf("{\"mode\":\"%s\",\"connections\":%u,\"duration_s\":%.3f,", mode,
           O.idle ? O.idle : O.conns, window_s);
    printf("\"requests\":%llu,\"rps\":%.1f,", (unsigned long long)completed_in_window,
           window_s > 0 ? (double)completed_in_window / window_s : 0.0);
    printf("\"responses\":%llu,\"sent\":%llu,", (unsigned long long)completed_total,
           (unsigned long long)sent_total);
    if (O.rate > 0) printf("\"rate\":%.1f,", O.rate);
    printf("\"status\":{");
    bool first = true;
    for (int s = 0; s < 600; s++)
        if (status_counts[s]) {
            printf("%s\"%d\":%llu", first ? "" : ",", s, (unsigned long long)status_counts[s]);
            first = false;
        }
    printf("},\"result\":{");
    for (unsigned k = 0; k < nlabels; k++)
        printf("%s\"%s\":%llu", k ? "," : "", labels[k].name, (unsigned long long)labels[k].n);
    printf("},\"errors\":{\"connect\":%llu,\"lost\":%llu,\"parse\":%llu},",
           (unsigned long long)err_connect, (unsigned long long)err_lost,
           (unsigned long long)err_parse);
    printf("\"reconnects\":%llu,\"closed_while_idle\":%llu,\"retried\":%llu,",
           (unsigned long long)reconnects, (unsigned long long)closed_while_idle,
           (unsigned long long)retried);
    printf("\"open_at_end\":%u,", n_open);
    if (O.rate > 0)
        printf("\"send_lag_ms\":{\"p50\":%.4f,\"p99\":%.4f,\"max\":%.4f},"
               "\"waited_for_connection\":%llu,",
               ms(hist_pct(&LAG, 50)), ms(hist_pct(&LAG, 99)), ms(LAG.max),
               (unsigned long long)waited_for_connection);
    printf("\"latency_ms\":{\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"p999\":%.4f,"
           "\"max\":%.4f,\"mean\":%.4f,\"count\":%llu}}\n",
           ms(hist_pct(&H, 50)), ms(hist_pct(&H, 90)), ms(hist_pct(&H, 99)), ms(hist_pct(&H, 99.9)),
           ms(H.max), H.total ? H.sum / (double)H.total / 1e6 : 0.0, (unsigned long long)H.total);
    fflush(stdout);
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen --port P --urls FILE [--host 127.0.0.1] [--connections N]\n"
                    "               [--duration S] [--once] [--rate R [--uniform]] [--seed N]\n"
                    "               [--spectrum FILE] [--host-header H]\n"
                    "       loadgen --port P --urls FILE --idle N [--ramp K] [--hold S]\n"
                    "               [--ready-file PATH]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"urls", required_argument, NULL, 'u'},
        {"connections", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"rate", required_argument, NULL, 'r'},
        {"once", no_argument, NULL, 'o'},
        {"uniform", no_argument, NULL, 'U'},
        {"idle", required_argument, NULL, 'i'},
        {"ramp", required_argument, NULL, 'R'},
        {"hold", required_argument, NULL, 'H'},
        {"ready-file", required_argument, NULL, 'f'},
        {"spectrum", required_argument, NULL, 's'},
        {"seed", required_argument, NULL, 'S'},
        {"host-header", required_argument, NULL, 'a'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'h': O.host = optarg; break;
        case 'p': O.port = atoi(optarg); break;
        case 'u': O.urls_path = optarg; break;
        case 'c': O.conns = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': O.duration = strtod(optarg, NULL); break;
        case 'r': O.rate = strtod(optarg, NULL); break;
        case 'o': O.once = true; break;
        case 'U': O.uniform = true; break;
        case 'i': O.idle = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'R': O.ramp = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'H': O.hold = strtod(optarg, NULL); break;
        case 'f': O.ready_file = optarg; break;
        case 's': O.spectrum = optarg; break;
        case 'S': O.seed = strtoull(optarg, NULL, 10); break;
        case 'a': O.host_header = optarg; break;
        default: usage();
        }
    }
    if (O.port <= 0 || !O.urls_path || (O.idle == 0 && O.conns == 0)) usage();
    rng_state = O.seed ? O.seed : 1;
    load_urls(O.urls_path);

    /* Many sockets: raise the soft descriptor limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)O.port);
    if (inet_pton(AF_INET, O.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        return 2;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0) die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) != 0) die("epoll_ctl timerfd");

    unsigned n = O.idle ? O.idle : O.conns;
    C = calloc(n, sizeof *C);
    if (!C) die("calloc");
    for (unsigned i = 0; i < n; i++) C[i].fd = -1;

    if (O.idle) {
        t_end = UINT64_MAX;
        run_loop(all_connected);
        unsigned idle_open = 0;
        for (unsigned i = 0; i < n; i++)
            if (C[i].st == C_IDLE) idle_open++;
        fprintf(stderr, "loadgen: %u idle connections open\n", idle_open);
        if (O.ready_file) {
            FILE *f = fopen(O.ready_file, "w");
            if (!f) die(O.ready_file);
            fprintf(f, "%u\n", idle_open);
            fclose(f);
        }
        hold_until = now_ns() + (uint64_t)(O.hold * 1e9);
        run_loop(hold_over);
        print_summary(0, "idle");
        return 0;
    }

    /* Connect everything first, so that the window measures requests only. */
    for (unsigned i = 0; i < n; i++) conn_open(i);
    t_end = UINT64_MAX;
    run_loop(all_connected);
    if (n_idle == 0) {
        fprintf(stderr, "loadgen: no connection could be opened\n");
        print_summary(0, O.rate > 0 ? "open" : "closed");
        return 1;
    }
    t0 = now_ns();
    t_end = t0 + (uint64_t)(O.duration * 1e9);
    if (O.rate > 0) {
        interval_ns = (uint64_t)(1e9 / O.rate);
        next_due = t0;
        open_loop_pump();
    } else {
        /* Closed loop: every connection starts with a request. */
        while (idle_top != UINT32_MAX) {
            unsigned i = idle_pop();
            if (C[i].st != C_IDLE) continue;
            const char *u = take_url();
            if (!u) break;
            send_request(i, u, 0);
        }
    }
    run_loop(window_over);
    uint64_t stop = now_ns();
    /* Requests still in flight at the end are answered (and counted) before
     * the summary, so that the answers match what the server recorded. */
    drain_deadline = stop + 30000000000ull;
    run_loop(drained);
    if (O.rate > 0) {
        /* Requests that were due but never sent (no free connection) waited at
         * least until the end: they count, so that overload shows. */
        uint64_t unsent = 0;
        while (next_due < t_end) {
            hist_add(&H, stop - next_due);
            unsent++;
            schedule_advance();
        }
        if (unsent)
            fprintf(stderr, "loadgen: %llu requests due but never sent\n",
                    (unsigned long long)unsent);
    }
    double window = (double)((stop < t_end ? stop : t_end) - t0) / 1e9;
    if (urls_exhausted) window = (double)(stop - t0) / 1e9;
    if (urls_exhausted && completed_in_window < completed_total)
        completed_in_window = completed_total;
    if (O.spectrum) write_spectrum(O.spectrum);
    print_summary(window, O.rate > 0 ? "open" : "closed");
    return err_parse ? 1 : 0;
}
