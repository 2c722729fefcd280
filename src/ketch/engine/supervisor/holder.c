/* ketch-holder: what stays of a container's supervisor once the container runs.
 *
 * The Python supervisor (ketch.engine.supervisor.shim) creates and starts the
 * container, then execs this program, handing over its descriptors and a JSON
 * document describing them (see handover.py). From then on this single-threaded
 * epoll loop does what the Python loop did: container output -> json-file log +
 * attach clients; requests on sup.sock (attach, resize, wait, state, start);
 * reaping (it stays the init's parent: a subreaper, same pid); and at the end
 * exit.json. Wire and disk formats are byte-compatible with the Python code.
 * The runtime's state is left for ketchd to delete.
 *
 * Usage: ketch-holder <fd of the handover document>
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536
#define HIGH_WATER (1 << 20)
#define MAX_REQUEST (1 << 20)
#define MAX_ENTRY (16 * 1024)
#define DRAIN_MS 2000
#define FLUSH_MS 5000
#define MAXFD 65536

/* ---- buffers ------------------------------------------------------------------------ */

typedef struct { char *p; size_t off, n, cap; } Buf;  /* data is p[off..n) */

static void die(const char *what) { fprintf(stderr, "ketch-holder: %s: %s\n", what, strerror(errno)); exit(1); }
static size_t blen(const Buf *b) { return b->n - b->off; }
static void bput(Buf *b, const void *d, size_t n) {
    if (b->off && b->off == b->n) b->off = b->n = 0;
    if (b->n + n > b->cap) {
        if (b->off) { memmove(b->p, b->p + b->off, b->n - b->off); b->n -= b->off; b->off = 0; }
        if (b->n + n > b->cap) {
            size_t c = b->cap ? b->cap : 256;
            while (c < b->n + n) c *= 2;
            if (!(b->p = realloc(b->p, c))) die("realloc");
            b->cap = c;
        }
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bputs(Buf *b, const char *s) { bput(b, s, strlen(s)); }
static void bprintf(Buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    bput(b, tmp, n < (int)sizeof tmp ? (size_t)n : sizeof tmp - 1);
}
static void bdel(Buf *b, size_t n) { b->off += n; if (b->off >= b->n) b->off = b->n = 0; }
static void bfree(Buf *b) { free(b->p); memset(b, 0, sizeof *b); }
static char *bdata(const Buf *b) { return b->p + b->off; }

/* ---- a small strict JSON reader --------------------------------------------------- */

enum { J_NULL, J_BOOL, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ };
typedef struct J { int t; long long i; char *s; size_t slen; char *key; struct J *kid, *next; } J;

static const char *jp;
static J *jnew(int t) { J *j = calloc(1, sizeof *j); if (!j) die("calloc"); j->t = t; return j; }
static void jfree(J *j) { while (j) { J *n = j->next; jfree(j->kid); free(j->s); free(j->key); free(j); j = n; } }
static void jws(void) { while (*jp == ' ' || *jp == '\t' || *jp == '\n' || *jp == '\r') jp++; }
static int hexv(int c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; }
static int hex4(const char *p) {
    int v = 0;
    for (int k = 0; k < 4; k++) { int h = hexv(p[k]); if (h < 0) return -1; v = v * 16 + h; }
    return v;
}
static void utf8(Buf *b, unsigned c) {
    char o[4]; size_t n;
    if (c < 0x80) { o[0] = (char)c; n = 1; }
    else if (c < 0x800) { o[0] = (char)(0xC0 | c >> 6); o[1] = (char)(0x80 | (c & 63)); n = 2; }
    else if (c < 0x10000) { o[0] = (char)(0xE0 | c >> 12); o[1] = (char)(0x80 | (c >> 6 & 63)); o[2] = (char)(0x80 | (c & 63)); n = 3; }
    else { o[0] = (char)(0xF0 | c >> 18); o[1] = (char)(0x80 | (c >> 12 & 63)); o[2] = (char)(0x80 | (c >> 6 & 63)); o[3] = (char)(0x80 | (c & 63)); n = 4; }
    bput(b, o, n);
}
static int jstr(char **out, size_t *len) {
    Buf b = {0};
    if (*jp++ != '"') return -1;
    for (;;) {
        unsigned char c = (unsigned char)*jp++;
        if (c == '"') break;
        if (c < 0x20) { bfree(&b); return -1; }
        if (c != '\\') { bput(&b, &c, 1); continue; }
        c = (unsigned char)*jp++;
        const char *m = strchr("\"\\/bfnrt", c);
        if (c && m) { bput(&b, &"\"\\/\b\f\n\r\t"[m - "\"\\/bfnrt"], 1); continue; }
        int u = c == 'u' ? hex4(jp) : -1;
        if (u < 0) { bfree(&b); return -1; }
        jp += 4;
        if (u >= 0xD800 && u < 0xDC00 && jp[0] == '\\' && jp[1] == 'u') {
            int lo = hex4(jp + 2);
            if (lo >= 0xDC00 && lo < 0xE000) { u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00); jp += 6; }
        }
        utf8(&b, (unsigned)u);
    }
    bput(&b, "", 1);
    *out = b.p; *len = b.n - 1;
    return 0;
}
static J *jval(int depth) {
    jws();
    if (depth > 32) return NULL;
    J *j = NULL;
    if (*jp == '{' || *jp == '[') {
        int obj = *jp++ == '{';
        j = jnew(obj ? J_OBJ : J_ARR);
        J **tail = &j->kid;
        jws();
        if (*jp == (obj ? '}' : ']')) { jp++; return j; }
        for (;;) {
            char *key = NULL; size_t kl;
            if (obj) {
                jws();
                if (*jp != '"' || jstr(&key, &kl) < 0) goto bad;
                jws();
                if (*jp++ != ':') { free(key); goto bad; }
            }
            J *v = jval(depth + 1);
            if (!v) { free(key); goto bad; }
            v->key = key; *tail = v; tail = &v->next;
            jws();
            if (*jp == ',') { jp++; continue; }
            if (*jp++ == (obj ? '}' : ']')) return j;
            goto bad;
        }
    }
    if (*jp == '"') { j = jnew(J_STR); if (jstr(&j->s, &j->slen) < 0) goto bad; return j; }
    if (!strncmp(jp, "true", 4) || !strncmp(jp, "false", 5)) { j = jnew(J_BOOL); j->i = *jp == 't'; jp += j->i ? 4 : 5; return j; }
    if (!strncmp(jp, "null", 4)) { jp += 4; return jnew(J_NULL); }
    if (*jp == '-' || (*jp >= '0' && *jp <= '9')) {
        char *end; errno = 0;
        j = jnew(J_INT);
        j->i = strtoll(jp, &end, 10);
        if (*end == '.' || *end == 'e' || *end == 'E' || errno) { j->t = J_FLOAT; strtod(jp, &end); }
        jp = end;
        return j;
    }
bad:
    jfree(j);
    return NULL;
}
static J *jparse(const char *s) {
    jp = s;
    J *j = jval(0);
    jws();
    if (j && *jp) { jfree(j); return NULL; }
    return j;
}
static J *jget(J *o, const char *k) {
    J *r = NULL;
    if (o && o->t == J_OBJ) for (J *c = o->kid; c; c = c->next) if (!strcmp(c->key, k)) r = c;
    return r;  /* the last of duplicate keys wins, as in Python */
}
static long long jint(J *o, const char *k, long long d) { J *v = jget(o, k); return v && v->t == J_INT ? v->i : d; }
static int jbool(J *o, const char *k) { J *v = jget(o, k); return v && v->t == J_BOOL && v->i; }
static const char *jstrv(J *o, const char *k) { J *v = jget(o, k); return v && v->t == J_STR ? v->s : NULL; }
static void jhex(J *o, const char *k, Buf *out) {
    const char *s = jstrv(o, k);
    for (; s && s[0] && s[1]; s += 2) { char c = (char)(hexv(s[0]) * 16 + hexv(s[1])); bput(out, &c, 1); }
}
/* a JSON string as Python's json.dumps writes it (ensure_ascii) */
static void jquote(Buf *b, const char *s, size_t n) {
    bputs(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *m = c ? strchr("\"\\\b\f\n\r\t", c) : NULL;
        if (m) { char e[3] = {'\\', "\"\\bfnrt"[m - "\"\\\b\f\n\r\t"], 0}; bputs(b, e); }
        else if (c < 0x20 || c == 0x7f) bprintf(b, "\\u%04x", c);
        else if (c < 0x80) bput(b, &c, 1);
        else {  /* valid UTF-8: it came from jstr or from our own ASCII */
            int k = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
            unsigned u = c & (0x3F >> k);
            for (int x = 0; x < k && i + 1 < n; x++) u = u << 6 | ((unsigned char)s[++i] & 63);
            if (u >= 0x10000) { u -= 0x10000; bprintf(b, "\\u%04x\\u%04x", 0xD800 + (u >> 10), 0xDC00 + (u & 0x3FF)); }
            else bprintf(b, "\\u%04x", u);
        }
    }
    bputs(b, "\"");
}

/* ---- state -------------------------------------------------------------------------- */

enum { M_REQUEST, M_ATTACH, M_WAIT, M_REPLY };
typedef struct Conn {
    int fd, mode, in, out, err, read_eof, closing, nkeys, held;
    unsigned char *keys;
    Buf ob, ib;
    struct Conn *next;
} Conn;

static const char *id, *dir;
static int ep, sigfd, listener = -1, master = -1, tty, stdin_once;
static int src_fd[2] = {-1, -1}, src_stream[2], nsrc;
static int sink_fd = -1, sink_eof; static Buf sink_buf;
static Conn *conns;
static unsigned char masks[MAXFD];
static pid_t init_pid;
static int exit_status = -1, finished;
static long long drain_until, flush_until;
static Buf exitrec;  /* the exit record, once exited */
/* the log */
static int log_fd = -1, max_file = 1, compress_rot;
static long long max_size = -1, log_size;
static const char *log_path;
static Buf pend[2]; static long long pend_ts[2]; static int pend_on[2], pend_seq[2], seq;
static const char *oom_path; static long long oom_start;

static long long mono_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000LL + t.tv_nsec / 1000000; }
static long long real_ns(void) { struct timespec t; clock_gettime(CLOCK_REALTIME, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }

/* Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped */
static void fmt_time(char *out, long long ns) {
    time_t s = ns / 1000000000; long frac = ns % 1000000000;
    struct tm tm; gmtime_r(&s, &tm);
    int n = sprintf(out, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (frac) { n += sprintf(out + n, ".%09ld", frac); while (out[n - 1] == '0') n--; }
    strcpy(out + n, "Z");
}

/* ---- json-file log (ketch.engine.logs.jsonfile) -------------------------------------- */

/* length of the valid UTF-8 sequence at s (strict, as Python's decoder), 0 if none */
static int u8len(const unsigned char *s, size_t n, unsigned *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int k; unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) k = 1;
    else if (c >= 0xE0 && c <= 0xEF) { k = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 0;
    if (n < (size_t)k + 1 || s[1] < lo || s[1] > hi) return 0;
    unsigned u = c & (0x3F >> k);
    for (int i = 1; i <= k; i++) { if ((s[i] & 0xC0) != 0x80) return 0; u = u << 6 | (s[i] & 63); }
    *cp = u;
    return k + 1;
}
static void log_escape(Buf *b, const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned cp; int k = u8len(s + i, n - i, &cp);
        if (!k) { bputs(b, "\\ufffd"); i++; continue; }
        if (cp == '\n') bputs(b, "\\n");
        else if (cp == '\r') bputs(b, "\\r");
        else if (cp == '"') bputs(b, "\\\"");
        else if (cp == '\\') bputs(b, "\\\\");
        else if (cp < 0x20 || cp == '<' || cp == '>' || cp == '&' || cp == 0x2028 || cp == 0x2029) bprintf(b, "\\u%04x", cp);
        else bput(b, s + i, k);
        i += k;
    }
}
static void log_open(void) {
    log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    struct stat st;
    log_size = log_fd >= 0 && fstat(log_fd, &st) == 0 ? st.st_size : 0;
}
static void rotated(char *out, int i, int gz) { snprintf(out, 4096, "%s.%d%s", log_path, i, gz ? ".gz" : ""); }
static void gzip_file(const char *src) {
    char tmp[4200], dst[4200];
    snprintf(tmp, sizeof tmp, "%s.gz.tmp", src);
    snprintf(dst, sizeof dst, "%s.gz", src);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (out < 0) return;
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t all; sigemptyset(&all); sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        int in = open(src, O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0) _exit(127);
        execlp("gzip", "gzip", "-n", "-6", "-c", (char *)NULL);
        _exit(127);
    }
    close(out);
    int st = 1;
    if (pid > 0) while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (pid > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && rename(tmp, dst) == 0) unlink(src);
    else unlink(tmp);  /* keep the plain file: readers take either */
}
static void log_rotate(void) {
    char a[4096], b[4096];
    close(log_fd);
    if (max_file < 2) unlink(log_path);
    else {
        rotated(a, max_file - 1, compress_rot); unlink(a);
        for (int i = max_file - 2; i > 0; i--) { rotated(a, i, compress_rot); rotated(b, i + 1, compress_rot); rename(a, b); }
        rotated(a, 1, 0); rename(log_path, a);
    }
    log_open();
    log_size = 0;
    if (max_file >= 2 && compress_rot) { rotated(a, 1, 0); gzip_file(a); }
}
static void log_append(int stream, const unsigned char *d, size_t n, long long ts) {
    Buf e = {0};
    char t[64];
    fmt_time(t, ts);
    bputs(&e, "{\"log\":\"");
    log_escape(&e, d, n);
    bprintf(&e, "\",\"stream\":\"%s\",\"time\":\"%s\"}\n", stream == 1 ? "stdout" : "stderr", t);
    if (max_size > 0 && log_size > 0 && log_size + (long long)blen(&e) > max_size) log_rotate();
    for (size_t off = 0; log_fd >= 0 && off < e.n;) {
        ssize_t w = write(log_fd, e.p + off, e.n - off);
        if (w <= 0) { if (w < 0 && errno == EINTR) continue; break; }
        off += (size_t)w;
    }
    log_size += (long long)e.n;
    bfree(&e);
}
static void log_line(int s, const unsigned char *d, size_t n, long long ts) {
    for (; n > MAX_ENTRY; d += MAX_ENTRY, n -= MAX_ENTRY) log_append(s, d, MAX_ENTRY, ts);
    log_append(s, d, n, ts);
}
static void log_keep(int s, long long ts) {  /* dockerd emits a full 16 KiB buffer at once */
    Buf *b = &pend[s - 1];
    while (blen(b) >= MAX_ENTRY) { log_append(s, (unsigned char *)bdata(b), MAX_ENTRY, ts); bdel(b, MAX_ENTRY); }
    if (blen(b)) { if (!pend_on[s - 1]) { pend_on[s - 1] = 1; pend_seq[s - 1] = ++seq; pend_ts[s - 1] = ts; } }
    else pend_on[s - 1] = 0;
}
static void log_write(int s, const unsigned char *d, size_t n) {
    long long ts = real_ns();
    size_t start = 0;
    Buf *b = &pend[s - 1];
    if (pend_on[s - 1]) {
        const unsigned char *nl = memchr(d, '\n', n);
        if (!nl) { bput(b, d, n); log_keep(s, pend_ts[s - 1]); return; }
        bput(b, d, (size_t)(nl - d) + 1);
        pend_on[s - 1] = 0;
        log_line(s, (unsigned char *)bdata(b), blen(b), pend_ts[s - 1]);
        bdel(b, blen(b));
        start = (size_t)(nl - d) + 1;
    }
    for (;;) {
        const unsigned char *nl = start < n ? memchr(d + start, '\n', n - start) : NULL;
        if (!nl) break;
        log_line(s, d + start, (size_t)(nl - d) + 1 - start, ts);
        start = (size_t)(nl - d) + 1;
    }
    if (start < n) { bput(b, d + start, n - start); log_keep(s, ts); }
}
static void log_close(void) {
    if (log_fd < 0) return;
    int first = pend_on[1] && (!pend_on[0] || pend_seq[1] < pend_seq[0]) ? 2 : 1;
    for (int k = 0; k < 2; k++) {
        int s = k ? 3 - first : first;
        if (pend_on[s - 1]) { log_append(s, (unsigned char *)bdata(&pend[s - 1]), blen(&pend[s - 1]), pend_ts[s - 1]); pend_on[s - 1] = 0; }
    }
    close(log_fd);
    log_fd = -1;
}

/* ---- epoll bookkeeping ------------------------------------------------------------------ */

static void forget(int fd) {
    if (fd >= 0 && fd < MAXFD && masks[fd]) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); masks[fd] = 0; }
}
static void closefd(int fd) { if (fd >= 0) { forget(fd); close(fd); } }
static void want(int fd, unsigned m) {
    if (fd < 0 || fd >= MAXFD) return;
    if (!m) { forget(fd); return; }
    if (masks[fd] == m) return;
    struct epoll_event ev = {.events = m, .data.fd = fd};
    epoll_ctl(ep, masks[fd] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    masks[fd] = (unsigned char)m;
}
static int is_src(int fd) { for (int i = 0; i < nsrc; i++) if (src_fd[i] == fd) return i; return -1; }
static Conn *conn_of(int fd) { for (Conn *c = conns; c; c = c->next) if (c->fd == fd) return c; return NULL; }
static int sink_for(Conn *c) { return c->in && c->mode == M_ATTACH ? sink_fd : -1; }

static void refresh(void) {
    int stalled = 0;
    for (Conn *c = conns; c; c = c->next) if (c->mode == M_ATTACH && blen(&c->ob) > HIGH_WATER) stalled = 1;
    for (int i = 0; i < nsrc; i++) if (src_fd[i] != sink_fd) want(src_fd[i], stalled ? 0 : EPOLLIN);
    if (sink_fd >= 0) want(sink_fd, (is_src(sink_fd) >= 0 && !stalled ? EPOLLIN : 0) | (blen(&sink_buf) ? EPOLLOUT : 0));
    for (Conn *c = conns; c; c = c->next) {
        unsigned m = blen(&c->ob) ? EPOLLOUT : 0;
        int s = sink_for(c);
        if (!c->read_eof && !(s >= 0 && blen(&sink_buf) > HIGH_WATER)) m |= EPOLLIN;
        want(c->fd, m);
    }
}

/* ---- data paths ---------------------------------------------------------------------------- */

static void drop_sink(void) {
    bdel(&sink_buf, blen(&sink_buf));
    sink_eof = 1;
    if (sink_fd < 0) return;
    if (is_src(sink_fd) < 0) closefd(sink_fd);
    sink_fd = -1;
}
static void drop_source(int i) {
    int fd = src_fd[i];
    src_fd[i] = src_fd[--nsrc]; src_stream[i] = src_stream[nsrc];
    if (fd == sink_fd) drop_sink(); else closefd(fd);
    if (fd == master) master = -1;
}
static void frame_to(Buf *b, int stream, const char *d, size_t n) {
    unsigned char h[8] = {(unsigned char)stream, 0, 0, 0, (unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8), (unsigned char)n};
    bput(b, h, 8);
    bput(b, d, n);
}
static void on_source(int i) {
    static char data[CHUNK];
    ssize_t n = read(src_fd[i], data, sizeof data);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { drop_source(i); return; }  /* EIO: the pty's slave side is gone */
    int s = src_stream[i];
    if (log_fd >= 0) log_write(s, (unsigned char *)data, (size_t)n);
    for (Conn *c = conns; c; c = c->next) {
        if (c->mode != M_ATTACH || c->closing || !(s == 1 ? c->out : c->err)) continue;
        if (tty) bput(&c->ob, data, (size_t)n); else frame_to(&c->ob, s, data, (size_t)n);
    }
}
static void flush_sink(void) {
    ssize_t n = write(sink_fd, bdata(&sink_buf), blen(&sink_buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { drop_sink(); return; }  /* EPIPE: the reader closed its stdin */
    bdel(&sink_buf, (size_t)n);
}

/* ---- clients ------------------------------------------------------------------------------- */

static void close_conn(Conn *c) {
    for (Conn **p = &conns; *p; p = &(*p)->next) if (*p == c) { *p = c->next; break; }
    closefd(c->fd);
    bfree(&c->ob); bfree(&c->ib); free(c->keys); free(c);
}
static void reply(Conn *c, Buf *msg, int done) {
    bput(&c->ob, bdata(msg), blen(msg));
    bputs(&c->ob, "\n");
    bfree(msg);
    if (done) { c->mode = M_REPLY; c->closing = 1; }
}
static void reply_error(Conn *c, const char *kind, const char *fmt, ...) {
    char m[1024];
    va_list ap; va_start(ap, fmt); vsnprintf(m, sizeof m, fmt, ap); va_end(ap);
    Buf b = {0};
    bputs(&b, "{\"error\": "); jquote(&b, m, strlen(m)); bprintf(&b, ", \"kind\": \"%s\"}", kind);
    reply(c, &b, 1);
}
static void accept_conn(void) {
    int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (fd >= MAXFD) { close(fd); return; }
    Conn *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->fd = fd; c->next = conns; conns = c;
}
static void flush_conn(Conn *c) {
    ssize_t n = send(c->fd, bdata(&c->ob), blen(&c->ob), MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { close_conn(c); return; }
    bdel(&c->ob, (size_t)n);
    if (c->closing && !blen(&c->ob)) close_conn(c);
}
/* protocol.DetachScanner: forward bytes before the sequence; hold a partial match */
static size_t scan(Conn *c, const unsigned char *d, size_t n, unsigned char *out, int *detached) {
    size_t o = 0;
    *detached = 0;
    if (!c->nkeys) { memcpy(out, d, n); return n; }
    unsigned char *seen = c->keys + c->nkeys;  /* scratch of nkeys+1 bytes */
    for (size_t i = 0; i < n; i++) {
        if (d[i] == c->keys[c->held]) c->held++;
        else {
            int len = c->held + 1, cut;
            memcpy(seen, c->keys, (size_t)c->held); seen[c->held] = d[i];
            for (cut = 1; cut < len; cut++) if (!memcmp(c->keys, seen + cut, (size_t)(len - cut))) break;
            memcpy(out + o, seen, (size_t)cut); o += (size_t)cut;
            c->held = len - cut;
        }
        if (c->held == c->nkeys) { c->held = 0; *detached = 1; return o; }
    }
    return o;
}
static void to_stdin(Conn *c, const unsigned char *d, size_t n) {
    unsigned char *out = malloc(n + (size_t)c->nkeys + 1);
    int detached;
    if (!out) die("malloc");
    size_t k = scan(c, d, n, out, &detached);
    if (k && sink_for(c) >= 0 && !sink_eof) bput(&sink_buf, out, k);
    free(out);
    if (detached) close_conn(c);
}
static void conn_eof(Conn *c) {  /* Docker's rules for the end of an attached stdin */
    c->read_eof = 1;
    if (c->mode != M_ATTACH) { if (c->mode != M_REPLY) close_conn(c); return; }
    if (c->in) {
        if (tty || !stdin_once) { close_conn(c); return; }
        if (sink_for(c) >= 0) sink_eof = 1;  /* closed once what is buffered is written */
    }
    if (!(c->out || c->err)) close_conn(c);
}

/* ---- requests ------------------------------------------------------------------------------ */

static int bool_field(Conn *c, J *r, const char *op, const char *k, int *out) {
    J *v = jget(r, k);
    if (v && v->t != J_BOOL) { reply_error(c, "InvalidArgument", "%s: '%s' has the wrong type", op, k); return -1; }
    *out = v && v->i;
    return 0;
}
static int valid_exec_id(const char *s) {
    size_t n = strlen(s);
    if (!n || n > 128) return 0;
    for (; *s; s++) if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", *s)) return 0;
    return 1;
}
static void handle(Conn *c, char *line) {
    J *r = jparse(line);
    if (!r) { reply_error(c, "InvalidArgument", "request is not JSON"); return; }
    if (r->t != J_OBJ) { reply_error(c, "InvalidArgument", "request must be a JSON object"); goto out; }
    J *opv = jget(r, "op");
    const char *op = opv && opv->t == J_STR ? opv->s : "";
    if (!strcmp(op, "attach")) {
        int in, o, e;
        if (bool_field(c, r, op, "stdin", &in) || bool_field(c, r, op, "stdout", &o) || bool_field(c, r, op, "stderr", &e)) goto out;
        J *keys = jget(r, "detach_keys"); int nk = 0;
        if (keys && keys->t != J_ARR) { reply_error(c, "InvalidArgument", "attach: 'detach_keys' has the wrong type"); goto out; }
        for (J *k = keys ? keys->kid : NULL; k; k = k->next, nk++)
            if (k->t != J_INT || k->i < 0 || k->i > 255) { reply_error(c, "InvalidArgument", "attach: detach_keys must be bytes (0-255)"); goto out; }
        if (exit_status >= 0) { reply_error(c, "FailedPrecondition", "container %s is not running", id); goto out; }
        c->mode = M_ATTACH; c->in = in; c->out = o; c->err = e;
        if (in && nk) {
            if (!(c->keys = malloc((size_t)nk * 2 + 1))) die("malloc");
            c->nkeys = 0;
            for (J *k = keys->kid; k; k = k->next) c->keys[c->nkeys++] = (unsigned char)k->i;
        }
        Buf b = {0}; bputs(&b, "{\"ok\": true}"); reply(c, &b, 0);
    } else if (!strcmp(op, "start")) {
        if (exit_status >= 0) reply_error(c, "FailedPrecondition", "container %s is not running", id);
        else reply_error(c, "FailedPrecondition", "container %s is already started", id);
    } else if (!strcmp(op, "resize")) {
        J *ex = jget(r, "exec_id");
        if (ex && ex->t != J_STR) { reply_error(c, "InvalidArgument", "resize: 'exec_id' has the wrong type"); goto out; }
        if (ex && !valid_exec_id(ex->s)) { reply_error(c, "InvalidArgument", "resize: invalid exec_id '%s'", ex->s); goto out; }
        long long hw[2]; const char *names[2] = {"height", "width"};
        for (int k = 0; k < 2; k++) {
            J *v = jget(r, names[k]);
            if (!v) { reply_error(c, "InvalidArgument", "resize: missing '%s'", names[k]); goto out; }
            if (v->t != J_INT) { reply_error(c, "InvalidArgument", "resize: '%s' has the wrong type", names[k]); goto out; }
            if (v->i < 0 || v->i > 0xFFFF) { reply_error(c, "InvalidArgument", "resize: %s out of range: %lld", names[k], v->i); goto out; }
            hw[k] = v->i;
        }
        if (ex) { reply_error(c, "NotFound", "No such exec instance: %s", ex->s); goto out; }
        if (master < 0) { reply_error(c, "FailedPrecondition", "container %s has no terminal", id); goto out; }
        struct winsize ws = {.ws_row = (unsigned short)hw[0], .ws_col = (unsigned short)hw[1]};
        ioctl(master, TIOCSWINSZ, &ws);
        Buf b = {0}; bputs(&b, "{\"ok\": true}"); reply(c, &b, 1);
    } else if (!strcmp(op, "wait")) {
        if (blen(&exitrec)) { Buf b = {0}; bputs(&b, "{\"ok\": true, \"exit\": "); bput(&b, bdata(&exitrec), blen(&exitrec)); bputs(&b, "}"); reply(c, &b, 1); }
        else c->mode = M_WAIT;
    } else if (!strcmp(op, "state")) {
        Buf b = {0};
        bprintf(&b, "{\"ok\": true, \"status\": \"%s\", \"pid\": %d, \"exit\": ", blen(&exitrec) ? "exited" : "running", (int)init_pid);
        if (blen(&exitrec)) bput(&b, bdata(&exitrec), blen(&exitrec)); else bputs(&b, "null");
        bputs(&b, "}");
        reply(c, &b, 1);
    } else {  /* f"unknown op {op!r}" */
        Buf q = {0};
        if (!opv) bputs(&q, "None");
        else if (opv->t == J_STR) { bputs(&q, "'"); bputs(&q, opv->s); bputs(&q, "'"); }
        else bputs(&q, opv->t == J_BOOL ? (opv->i ? "True" : "False") : opv->t == J_NULL ? "None" : "?");
        bput(&q, "", 1);
        reply_error(c, "InvalidArgument", "unknown op %s", q.p);
        bfree(&q);
    }
out:
    jfree(r);
}
static void on_conn(Conn *c) {
    static unsigned char data[CHUNK];
    ssize_t n = recv(c->fd, data, sizeof data, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { close_conn(c); return; }
    if (n == 0) { conn_eof(c); return; }
    if (c->mode == M_REQUEST) {
        bput(&c->ib, data, (size_t)n);
        char *nl = memchr(bdata(&c->ib), '\n', blen(&c->ib));
        if (!nl) {
            if (blen(&c->ib) > MAX_REQUEST) reply_error(c, "InvalidArgument", "request line too long");
            return;
        }
        *nl = 0;
        size_t rest = blen(&c->ib) - (size_t)(nl + 1 - bdata(&c->ib));
        char *line = strdup(bdata(&c->ib));
        unsigned char *tail = malloc(rest + 1);
        if (!line || !tail) die("malloc");
        memcpy(tail, nl + 1, rest);
        bdel(&c->ib, blen(&c->ib));
        handle(c, line);
        if (rest && c->mode == M_ATTACH) to_stdin(c, tail, rest);
        free(line); free(tail);
    } else if (c->mode == M_ATTACH) to_stdin(c, data, (size_t)n);
}

/* ---- the end ------------------------------------------------------------------------------- */

static void reap(void) {
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) > 0) {}
    for (;;) {
        int st; pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0) return;
        if (p == init_pid && exit_status < 0) { exit_status = st; drain_until = mono_ms() + DRAIN_MS; }
    }
}
static long long oom_count(void) {
    FILE *f = oom_path ? fopen(oom_path, "re") : NULL;
    char k[64]; long long v, r = 0;
    if (!f) return 0;
    while (fscanf(f, "%63s %lld", k, &v) == 2) if (!strcmp(k, "oom_kill")) r = v;
    fclose(f);
    return r;
}
static void finish(void) {
    char path[4200], tmp[4300], t[64];
    finished = 1;
    while (nsrc) drop_source(0);
    drop_sink();
    log_close();
    int oom = oom_path && oom_count() > oom_start;
    int code = WIFSIGNALED(exit_status) ? 128 + WTERMSIG(exit_status) : WIFEXITED(exit_status) ? WEXITSTATUS(exit_status) : 255;
    fmt_time(t, real_ns());
    Buf rec = {0};
    bprintf(&rec, "{\"exit_code\": %d, \"finished_at\": \"%s\", \"oom_killed\": %s, \"error\": null}", code, t, oom ? "true" : "false");
    snprintf(path, sizeof path, "%s/exit.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, rec.p, rec.n) != (ssize_t)rec.n || fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0)
        fprintf(stderr, "ketch-holder: writing %s: %s\n", path, strerror(errno));
    exitrec = rec;
    /* no new clients: ketchd deletes the runtime's state once exit.json is there and sup.sock is not */
    snprintf(path, sizeof path, "%s/sup.sock", dir);
    unlink(path);
    closefd(listener);
    listener = -1;
    flush_until = mono_ms() + FLUSH_MS;
    for (Conn *c = conns, *n; c; c = n) {
        n = c->next;
        if (c->mode == M_WAIT) { Buf b = {0}; bputs(&b, "{\"ok\": true, \"exit\": "); bput(&b, rec.p, rec.n); bputs(&b, "}"); reply(c, &b, 1); }
        else if (c->mode == M_ATTACH) c->closing = 1;
    }
}
static void progress(void) {
    if (exit_status >= 0 && !finished && (mono_ms() >= drain_until || !nsrc)) finish();
    if (sink_fd >= 0 && sink_eof && !blen(&sink_buf) && !tty) drop_sink();
    for (Conn *c = conns, *n; c; c = n) { n = c->next; if (c->closing && !blen(&c->ob)) close_conn(c); }
}

/* ---- set-up from the handover document ---------------------------------------------------- */

static char *read_all(int fd) {
    Buf b = {0}; char tmp[65536]; ssize_t n;
    while ((n = read(fd, tmp, sizeof tmp)) > 0 || (n < 0 && errno == EINTR)) if (n > 0) bput(&b, tmp, (size_t)n);
    bput(&b, "", 1);
    return b.p;
}
static int stream_of(const char *s) { return s && !strcmp(s, "stderr") ? 2 : 1; }
static void load(J *d) {
    id = jstrv(d, "id"); dir = jstrv(d, "state_dir");
    if (!id || !dir) { fprintf(stderr, "ketch-holder: bad handover document\n"); exit(1); }
    init_pid = (pid_t)jint(d, "init_pid", 0);
    tty = jbool(d, "tty"); stdin_once = jbool(d, "stdin_once");
    listener = (int)jint(d, "listener", -1);
    master = (int)jint(d, "master", -1);
    for (J *s = jget(d, "sources") ? jget(d, "sources")->kid : NULL; s && nsrc < 2; s = s->next) {
        src_fd[nsrc] = (int)jint(s, "fd", -1); src_stream[nsrc++] = stream_of(jstrv(s, "stream"));
    }
    J *sk = jget(d, "sink");
    if (sk && sk->t == J_OBJ) { sink_fd = (int)jint(sk, "fd", -1); sink_eof = jbool(sk, "eof"); jhex(sk, "buf", &sink_buf); }
    for (J *j = jget(d, "conns") ? jget(d, "conns")->kid : NULL; j; j = j->next) {
        Conn *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = (int)jint(j, "fd", -1);
        const char *m = jstrv(j, "mode");
        c->mode = !m ? M_REQUEST : !strcmp(m, "attach") ? M_ATTACH : !strcmp(m, "wait") ? M_WAIT : !strcmp(m, "reply") ? M_REPLY : M_REQUEST;
        c->in = jbool(j, "stdin"); c->out = jbool(j, "stdout"); c->err = jbool(j, "stderr");
        c->read_eof = jbool(j, "read_eof"); c->closing = jbool(j, "closing");
        J *keys = jget(j, "detach_keys"); int nk = 0;
        for (J *k = keys ? keys->kid : NULL; k; k = k->next) nk++;
        if (nk) {
            if (!(c->keys = malloc((size_t)nk * 2 + 1))) die("malloc");
            for (J *k = keys->kid; k; k = k->next) c->keys[c->nkeys++] = (unsigned char)k->i;
            c->held = (int)jint(j, "held", 0);
        }
        jhex(j, "out", &c->ob); jhex(j, "in", &c->ib);
        c->next = conns; conns = c;
    }
    J *lg = jget(d, "log");
    if (lg && lg->t == J_OBJ && jstrv(lg, "path")) {
        log_path = jstrv(lg, "path");
        max_size = jint(lg, "max_size", -1); max_file = (int)jint(lg, "max_file", 1); compress_rot = jbool(lg, "compress");
        log_open();
        if (log_fd < 0) fprintf(stderr, "ketch-holder: opening %s: %s\n", log_path, strerror(errno));
        for (J *p = jget(lg, "pending") ? jget(lg, "pending")->kid : NULL; p; p = p->next) {
            int s = stream_of(jstrv(p, "stream"));
            jhex(p, "data", &pend[s - 1]);
            if (blen(&pend[s - 1])) { pend_on[s - 1] = 1; pend_seq[s - 1] = ++seq; pend_ts[s - 1] = jint(p, "ts", real_ns()); }
        }
    }
    J *oom = jget(d, "oom");
    if (oom && oom->t == J_OBJ) { oom_path = jstrv(oom, "path"); oom_start = jint(oom, "start", 0); }
    const char *name = jstrv(d, "name");
    if (name) prctl(PR_SET_NAME, name, 0, 0, 0);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: ketch-holder <handover fd>\n"); return 2; }
    int docfd = atoi(argv[1]);
    sigset_t chld; sigemptyset(&chld); sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    signal(SIGTERM, SIG_IGN); signal(SIGINT, SIG_IGN); signal(SIGHUP, SIG_IGN); signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    if ((sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) die("signalfd");
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
    lseek(docfd, 0, SEEK_SET);
    char *text = read_all(docfd);
    close(docfd);
    J *doc = jparse(text);
    if (!doc) { fprintf(stderr, "ketch-holder: handover document is not JSON\n"); return 1; }
    load(doc);
    /* handed fds are ours now: not for children (gzip) */
    int fds[4] = {listener, master, src_fd[0], src_fd[1]};
    for (int i = 0; i < 4; i++) if (fds[i] >= 0) fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    if (sink_fd >= 0) fcntl(sink_fd, F_SETFD, FD_CLOEXEC);
    for (Conn *c = conns; c; c = c->next) fcntl(c->fd, F_SETFD, FD_CLOEXEC);
    want(sigfd, EPOLLIN);
    reap();  /* the init may have exited during the handover */
    struct epoll_event evs[64];
    for (;;) {
        progress();
        long long now = mono_ms();
        if (finished) {
            int pending = 0;
            for (Conn *c = conns; c; c = c->next) if (blen(&c->ob)) pending = 1;
            if (now >= flush_until || !pending) break;
        }
        refresh();
        want(listener, listener >= 0 ? EPOLLIN : 0);
        long long dl = finished ? flush_until : exit_status >= 0 ? drain_until : -1;
        int n = epoll_wait(ep, evs, 64, dl < 0 ? -1 : (int)(dl > now ? dl - now : 0));
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd; unsigned ev = evs[i].events;
            if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR) && masks[fd] & EPOLLIN) {
                int k;
                Conn *c;
                if (fd == sigfd) reap();
                else if (fd == listener) accept_conn();
                else if ((k = is_src(fd)) >= 0) on_source(k);
                else if ((c = conn_of(fd))) on_conn(c);
            }
            if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR) && fd < MAXFD && masks[fd] & EPOLLOUT) {
                Conn *c = conn_of(fd);
                if (c) flush_conn(c);
                else if (fd == sink_fd) flush_sink();
            }
        }
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/sup.sock", dir);
    unlink(path);
    while (conns) close_conn(conns);
    struct stat st;
    if (fstat(2, &st) == 0 && st.st_size == 0) { snprintf(path, sizeof path, "%s/sup.log", dir); unlink(path); }
    jfree(doc);
    free(text);
    return 0;
}
