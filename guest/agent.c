/*
 * loft's guest agent: PID 1 of a loft VM once the initramfs has mounted the workspace.
 *
 * It speaks the framed protocol of loft.runtime.vm_protocol over the virtio-serial port
 * named "loft.agent" (found through /sys/class/virtio-ports, the guest has no udev):
 * run commands in the workspace (chrooted into /ws) with their standard streams carried
 * as frames, read and write files, freeze and thaw the workspace's filesystem, set the
 * clock and add entropy after a restore or fork, and give a fork's NIC a new MAC. Many
 * channels run at once; one poll loop serves them all.
 *
 * Why C and not Python: it starts with the kernel's first process, before anything is
 * mounted, and must be ready within milliseconds of boot; a static binary of a few
 * hundred KB needs no interpreter, no closure on a disk, no page-in of a standard
 * library under TCG. The host side, which does the real work, is Python.
 *
 * The host is trusted (it is the hypervisor); the frames it sends are still checked
 * against their declared sizes, because a bug there must not corrupt a tenant's machine.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <netinet/in.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x4c46
#define HEADER 12
#define MAX_REQUEST (1 << 20) /* the host's frames: a file written at once, an exec */
#define MAX_CHUNK 32768       /* the agent's data frames (the host accepts 64 KiB) */
#define MAX_CHANNELS 64
/* Output bytes a channel may send before the host grants more (WINDOW): a reader that
 * does not keep up stalls its own command, never the other channels. */
#define CREDIT (256 * 1024)
#define UNLIMITED 0xffffffffu /* granted for a channel no host reads: its output is dropped */
/* A kept command's newest output while no host reads it (the workspace's [run] command
 * across a suspend, restore or fork), handed over whole to the next ATTACH. */
#define KEPT_MAX CREDIT
#define ROOT "/ws"
#define PORT_NAME "loft.agent"
#define NIC "eth0" /* the one NIC of a VM with outbound networking */

enum {
	PING = 1, PONG = 2, EXEC = 3, STDIN_DATA = 4, SIGNAL = 5, READ_FILE = 6,
	WRITE_FILE = 7, FSFREEZE = 8, FSTHAW = 9, SET_CLOCK = 10, RESEED = 11, EXEC_TTY = 12, RESIZE = 13, CONNECT = 14, WINDOW = 15,
	SET_MAC = 16, EXEC_KEPT = 17, ATTACH = 18,
	STARTED = 20, STDOUT_DATA = 21, STDERR_DATA = 22, EXIT = 23, ERROR = 24,
};

struct channel {
	uint32_t id;
	pid_t pid;      /* 0 once reaped */
	int in, out, err; /* -1 once closed; on a terminal, in and out are its master */
	int status;
	int tty;
	int sock; /* a connection to a port inside (in and out are the socket), no process */
	long credit; /* output bytes it may still send; -1: unlimited */
	unsigned char *inbuf; /* input the command has not taken yet (at most CREDIT bytes) */
	size_t inlen;
	int in_eof; /* the host's end of input, passed on once inbuf is written */
	int stale; /* opened by an earlier host connection: its id may be reused by the new one */
	int keep;  /* the kept command: while stale, its output goes to the kept buffer */
};

static unsigned char kept_out[KEPT_MAX];
static size_t kept_len;
static int kept_done = -1; /* the kept command's exit status once it ended while stale */

static struct channel channels[MAX_CHANNELS];
static int port = -1;

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return; /* the host went away: frames are dropped, as by QEMU */
		}
		p += n;
		len -= (size_t)n;
	}
}

static void send_frame(int type, uint32_t ch, const void *data, size_t len)
{
	unsigned char h[HEADER];
	h[0] = MAGIC >> 8; h[1] = MAGIC & 0xff; h[2] = (unsigned char)type; h[3] = 0;
	put32(h + 4, ch);
	put32(h + 8, (uint32_t)len);
	/* One write per frame, so a frame is never split by another channel's. */
	unsigned char buf[HEADER + MAX_CHUNK + 256];
	if (len <= sizeof(buf) - HEADER) {
		memcpy(buf, h, HEADER);
		memcpy(buf + HEADER, data, len);
		write_all(port, buf, HEADER + len);
	}
}

static void send_u32(int type, uint32_t ch, uint32_t v)
{
	unsigned char b[4];
	put32(b, v);
	send_frame(type, ch, b, 4);
}

static void send_error(uint32_t ch, int err, const char *what)
{
	unsigned char b[4 + 200];
	int n = snprintf((char *)b + 4, 200, "%s: %s", what, strerror(err));
	put32(b, (uint32_t)err);
	send_frame(ERROR, ch, b, 4 + (size_t)(n < 200 ? n : 199));
}

static struct channel *find(uint32_t id)
{
	for (int i = 0; i < MAX_CHANNELS; i++)
		if (channels[i].id == id && !channels[i].stale &&
		    (channels[i].pid || channels[i].out >= 0 || channels[i].err >= 0))
			return &channels[i];
	return NULL;
}

static struct channel *slot(void)
{
	for (int i = 0; i < MAX_CHANNELS; i++)
		if (!channels[i].pid && channels[i].out < 0 && channels[i].err < 0 && channels[i].in < 0)
			return &channels[i];
	return NULL;
}

/* Output of the kept command while no host reads it: the newest KEPT_MAX bytes. */
static void keep_output(const char *data, size_t n)
{
	if (n >= KEPT_MAX) {
		data += n - KEPT_MAX;
		n = KEPT_MAX;
	}
	if (kept_len + n > KEPT_MAX) {
		size_t drop = kept_len + n - KEPT_MAX;
		memmove(kept_out, kept_out + drop, kept_len - drop);
		kept_len -= drop;
	}
	memcpy(kept_out + kept_len, data, n);
	kept_len += n;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* EXIT goes out once the process is reaped and both of its output pipes are drained. */
static void maybe_done(struct channel *c)
{
	if (c->pid == 0 && c->out < 0 && c->err < 0 && c->id) {
		close_fd(&c->in);
		free(c->inbuf);
		c->inbuf = NULL;
		c->inlen = 0;
		c->in_eof = 0;
		if (!c->stale)
			send_u32(EXIT, c->id, (uint32_t)c->status);
		else if (c->keep)
			kept_done = c->status;
		c->id = 0;
		c->stale = c->keep = 0;
	}
}

/* Strings packed NUL-terminated: returns the next one, or NULL past the end. */
static char *next_string(char **p, char *end)
{
	char *s = *p;
	char *nul = memchr(s, 0, (size_t)(end - s));
	if (nul == NULL)
		return NULL;
	*p = nul + 1;
	return s;
}

/* A new terminal: its master, and in *slave the slave's path as the chrooted child sees it. */
static int open_terminal(char *slave, size_t size, unsigned rows, unsigned cols)
{
	int master = open(ROOT "/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	int unlock = 0, n;
	if (master < 0)
		return -1;
	struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
	if (ioctl(master, TIOCSPTLCK, &unlock) || ioctl(master, TIOCGPTN, &n) ||
	    ioctl(master, TIOCSWINSZ, &ws)) {
		close(master);
		return -1;
	}
	snprintf(slave, size, "/dev/pts/%d", n);
	return master;
}

static void do_exec(uint32_t ch, unsigned char *data, uint32_t len, int tty, int keep)
{
	unsigned rows = 0, cols = 0;
	if (tty) {
		if (len < 4) {
			send_error(ch, EINVAL, "exec");
			return;
		}
		rows = (unsigned)data[0] << 8 | data[1];
		cols = (unsigned)data[2] << 8 | data[3];
		data += 4;
		len -= 4;
	}
	if (len < 12 || find(ch)) {
		send_error(ch, EINVAL, "exec");
		return;
	}
	uid_t uid = get32(data);
	gid_t gid = get32(data + 4);
	unsigned argc = (unsigned)data[8] << 8 | data[9];
	unsigned envc = (unsigned)data[10] << 8 | data[11];
	char *p = (char *)data + 12, *end = (char *)data + len;
	char *cwd = next_string(&p, end);
	char **argv = calloc(argc + 1, sizeof(char *));
	char **envp = calloc(envc + 1, sizeof(char *));
	int ok = cwd != NULL && argc > 0 && argv && envp;
	for (unsigned i = 0; ok && i < argc; i++)
		ok = (argv[i] = next_string(&p, end)) != NULL;
	for (unsigned i = 0; ok && i < envc; i++)
		ok = (envp[i] = next_string(&p, end)) != NULL;
	struct channel *c = ok ? slot() : NULL;
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
	if (!ok || c == NULL) {
		send_error(ch, ok ? EAGAIN : EINVAL, "exec");
		goto done;
	}
	char slave[64] = "";
	if (tty) {
		/* in[1] and out[0] are the master; the child opens the slave as its terminal */
		if ((in[1] = open_terminal(slave, sizeof(slave), rows, cols)) < 0 ||
		    (out[0] = fcntl(in[1], F_DUPFD_CLOEXEC, 0)) < 0) {
			send_error(ch, errno, "terminal");
			goto fail;
		}
	} else if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
		send_error(ch, errno, "pipe");
		goto fail;
	}
	int report[2];
	if (pipe2(report, O_CLOEXEC)) {
		send_error(ch, errno, "pipe");
		goto fail;
	}
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t all;
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		if (!tty) {
			dup2(in[0], 0); dup2(out[1], 1); dup2(err[1], 2);
		}
		const char *step = "chroot";
		int ok = chroot(ROOT) == 0 && (step = "chdir", chdir(cwd) == 0) &&
			 (step = "setsid", setsid() >= 0);
		if (ok && tty) { /* opened by a session leader: it becomes the controlling terminal */
			int t = open(slave, O_RDWR);
			ok = (step = "terminal", t >= 0) && ioctl(t, TIOCSCTTY, 0) == 0 &&
			     dup2(t, 0) == 0 && dup2(t, 1) == 1 && dup2(t, 2) == 2;
			if (t > 2)
				close(t);
		}
		if (ok && (step = "setgroups", setgroups(0, NULL) == 0) && (step = "setgid", setgid(gid) == 0) &&
		    (step = "setuid", setuid(uid) == 0)) {
			umask(022);
			step = argv[0];
			execvpe(argv[0], argv, envp);
		}
		int e = errno;
		/* The reason, to the parent: errno then the failing step's name. */
		char msg[256];
		int n = snprintf(msg + 4, sizeof(msg) - 4, "%s", step);
		put32((unsigned char *)msg, (uint32_t)e);
		write_all(report[1], msg, 4 + (size_t)(n < 250 ? n : 250));
		_exit(127);
	}
	close(report[1]);
	if (pid < 0) {
		close(report[0]);
		send_error(ch, errno, "fork");
		goto fail;
	}
	char msg[256];
	ssize_t n;
	do
		n = read(report[0], msg, sizeof(msg) - 1);
	while (n < 0 && errno == EINTR);
	close(report[0]);
	close_fd(&in[0]); close_fd(&out[1]); close_fd(&err[1]);
	if (n >= 4) { /* exec failed: the child exits 127 and is reaped by the loop */
		msg[n] = 0;
		send_error(ch, (int)get32((unsigned char *)msg), msg + 4);
		close_fd(&in[1]); close_fd(&out[0]); close_fd(&err[0]);
		goto done;
	}
	c->tty = tty;
	c->sock = 0;
	c->stale = 0;
	if (keep) { /* one kept command at a time: a new one replaces the last */
		for (int i = 0; i < MAX_CHANNELS; i++)
			channels[i].keep = 0;
		kept_len = 0;
		kept_done = -1;
	}
	c->keep = keep;
	c->credit = CREDIT;
	c->inlen = 0;
	c->in_eof = 0;
	fcntl(in[1], F_SETFL, O_NONBLOCK); /* a command not reading its input holds nothing */
	c->id = ch;
	c->pid = pid;
	c->in = in[1];
	c->out = out[0];
	c->err = err[0];
	send_u32(STARTED, ch, (uint32_t)pid);
	goto done;
fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0) close(in[i]);
		if (out[i] >= 0) close(out[i]);
		if (err[i] >= 0) close(err[i]);
	}
done:
	free(argv);
	free(envp);
}

/* A connection to 127.0.0.1:PORT in the guest (port forwarding): the workspace is only
 * ever the server end of a connection to its own loopback. */
static void do_connect(uint32_t ch, unsigned char *data, uint32_t len)
{
	struct channel *c = len == 2 && !find(ch) ? slot() : NULL;
	if (c == NULL) {
		send_error(ch, len == 2 ? EAGAIN : EINVAL, "connect");
		return;
	}
	struct sockaddr_in addr = {.sin_family = AF_INET,
				   .sin_port = htons((uint16_t)(data[0] << 8 | data[1])),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		send_error(ch, e, "connect");
		return;
	}
	int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (dup < 0) {
		send_error(ch, errno, "connect");
		close(fd);
		return;
	}
	*c = (struct channel){ch, 0, fd, dup, -1, 0, 0, 1, CREDIT, NULL, 0, 0, 0, 0};
	fcntl(fd, F_SETFL, O_NONBLOCK);
	send_u32(STARTED, ch, 0);
}

/* Paths are the workspace's: opened below ROOT by a child chrooted there, so a link
 * inside cannot lead the agent out of it. */
static void do_file(int type, uint32_t ch, unsigned char *data, uint32_t len)
{
	uint32_t mode = 0;
	if (type == WRITE_FILE) {
		if (len < 4) {
			send_error(ch, EINVAL, "write");
			return;
		}
		mode = get32(data) & 07777;
		data += 4;
		len -= 4;
	}
	char *p = (char *)data, *end = (char *)data + len;
	char *path = next_string(&p, end);
	if (path == NULL) {
		send_error(ch, EINVAL, "file");
		return;
	}
	int fds[2];
	if (pipe2(fds, O_CLOEXEC)) {
		send_error(ch, errno, "pipe");
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		close(fds[0]);
		int e = 0;
		if (chroot(ROOT) || chdir("/")) {
			e = errno;
		} else if (type == READ_FILE) {
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				e = errno;
			char buf[MAX_CHUNK];
			ssize_t n;
			while (fd >= 0 && (n = read(fd, buf, sizeof(buf))) != 0) {
				if (n < 0) {
					if (errno == EINTR)
						continue;
					e = errno;
					break;
				}
				send_frame(STDOUT_DATA, ch, buf, (size_t)n);
			}
		} else {
			int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
			if (fd < 0) {
				e = errno;
			} else {
				size_t left = (size_t)(end - p);
				while (left > 0) {
					ssize_t n = write(fd, p, left);
					if (n < 0) {
						if (errno == EINTR)
							continue;
						e = errno;
						break;
					}
					p += n;
					left -= (size_t)n;
				}
				if (!e && close(fd))
					e = errno;
			}
		}
		unsigned char b[4];
		put32(b, (uint32_t)e);
		write_all(fds[1], b, 4);
		_exit(0);
	}
	close(fds[1]);
	unsigned char b[4] = {0};
	ssize_t n = pid < 0 ? -1 : read(fds[0], b, 4);
	int e = pid < 0 ? errno : n == 4 ? (int)get32(b) : EIO;
	close(fds[0]);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	if (e)
		send_error(ch, e, path);
	else
		send_u32(EXIT, ch, 0);
}

static void do_freeze(int type, uint32_t ch)
{
	int fd = open(ROOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = -1;
	if (fd >= 0) {
		if (type == FSFREEZE)
			syncfs(fd); /* the bulk written back while writers still run */
		rc = ioctl(fd, type == FSFREEZE ? FIFREEZE : FITHAW, 0);
		int e = errno;
		close(fd);
		errno = e;
	}
	if (rc)
		send_error(ch, errno, type == FSFREEZE ? "freeze" : "thaw");
	else
		send_u32(EXIT, ch, 0);
}

static void do_clock(uint32_t ch, unsigned char *data, uint32_t len)
{
	struct timespec ts;
	if (len != 12) {
		send_error(ch, EINVAL, "clock");
		return;
	}
	ts.tv_sec = (time_t)((uint64_t)get32(data) << 32 | get32(data + 4));
	ts.tv_nsec = get32(data + 8);
	if (clock_settime(CLOCK_REALTIME, &ts))
		send_error(ch, errno, "clock");
	else
		send_u32(EXIT, ch, 0);
}

static void do_reseed(uint32_t ch, unsigned char *data, uint32_t len)
{
	struct {
		struct rand_pool_info info;
		unsigned char buf[512];
	} r;
	if (len == 0 || len > sizeof(r.buf)) {
		send_error(ch, EINVAL, "reseed");
		return;
	}
	r.info.entropy_count = (int)len * 8;
	r.info.buf_size = (int)len;
	memcpy(r.buf, data, len);
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	/* Added, then the generator rekeyed from the pool at once: a restored or forked
	 * guest must not go on with the output stream its snapshot already had. */
	int rc = fd < 0 ? -1 : ioctl(fd, RNDADDENTROPY, &r.info);
	if (rc == 0)
		rc = ioctl(fd, RNDRESEEDCRNG);
	int e = errno;
	if (fd >= 0)
		close(fd);
	if (rc)
		send_error(ch, e, "reseed");
	else
		send_u32(EXIT, ch, 0);
}

/* Channel ch of this host connection takes over the kept command: what it wrote while
 * no host read it, then its output as it comes, then its EXIT (at once if it ended). */
static void do_attach(uint32_t ch)
{
	struct channel *c = NULL;
	for (int i = 0; i < MAX_CHANNELS; i++)
		if (channels[i].id && channels[i].keep && channels[i].stale)
			c = &channels[i];
	if (find(ch) || (c == NULL && kept_done < 0)) {
		send_error(ch, find(ch) ? EINVAL : ENOENT, "no kept command runs in this VM");
		return;
	}
	for (size_t off = 0; off < kept_len; off += MAX_CHUNK)
		send_frame(STDOUT_DATA, ch, kept_out + off, kept_len - off < MAX_CHUNK ? kept_len - off : MAX_CHUNK);
	long sent = (long)kept_len;
	kept_len = 0;
	if (c == NULL) {
		send_u32(EXIT, ch, (uint32_t)kept_done);
		kept_done = -1;
		return;
	}
	close_fd(&c->in); /* the kept command never reads input (the node gives it none) */
	c->id = ch;
	c->stale = 0;
	c->credit = CREDIT - sent;
}

/* A live fork is a new machine on the network: a new (locally administered, unicast)
 * MAC on its NIC. virtio-net changes it live and tells the device. */
static void do_set_mac(uint32_t ch, unsigned char *data, uint32_t len)
{
	if (len != 6 || (data[0] & 3) != 2) {
		send_error(ch, EINVAL, "mac");
		return;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", NIC);
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, data, 6);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int rc = fd < 0 ? -1 : ioctl(fd, SIOCSIFHWADDR, &ifr);
	int e = errno;
	if (fd >= 0)
		close(fd);
	if (rc)
		send_error(ch, e, "mac");
	else
		send_u32(EXIT, ch, 0);
}

/* Write what input the command takes now; grant the host as much again (WINDOW), and
 * pass the end of input on once all is written. */
static void flush_input(struct channel *c)
{
	size_t taken = 0;
	while (c->inlen > 0 && c->in >= 0) {
		ssize_t n = write(c->in, c->inbuf + taken, c->inlen - taken);
		if (n > 0) {
			taken += (size_t)n;
			if (taken == c->inlen)
				break;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		taken = c->inlen; /* its reader is gone: the rest is dropped */
		break;
	}
	if (c->in < 0)
		taken = c->inlen;
	if (taken) {
		memmove(c->inbuf, c->inbuf + taken, c->inlen - taken);
		c->inlen -= taken;
		if (!c->stale) /* a stale id may be another channel's now */
			send_u32(WINDOW, c->id, (uint32_t)taken);
	}
	if (c->inlen == 0 && c->in_eof && c->in >= 0) {
		c->in_eof = 0;
		if (c->sock) /* the other end keeps its direction open */
			shutdown(c->in, SHUT_WR);
		if (!c->tty) /* a terminal's end of input is the user's ^D, sent as data */
			close_fd(&c->in);
	}
}

static const char *boot_error; /* set by the init when the workspace could not be mounted */

static void handle(int type, uint32_t ch, unsigned char *data, uint32_t len)
{
	struct channel *c;
	if (boot_error && type != PING) {
		unsigned char b[4 + 400];
		int n = snprintf((char *)b + 4, 400, "boot failed: %s", boot_error);
		put32(b, EIO);
		send_frame(ERROR, ch, b, 4 + (size_t)(n < 400 ? n : 399));
		return;
	}
	switch (type) {
	case PING:
		/* a new host connection: it holds none of the channels open now, so nothing
		 * will grant them credit, and it numbers its own channels afresh. They go stale:
		 * never matched by id again, their output dropped (the kept command's kept)
		 * rather than left to block or sent under an id that is now another's. */
		for (int i = 0; i < MAX_CHANNELS; i++)
			if (channels[i].id) {
				channels[i].credit = -1;
				channels[i].stale = 1;
			}
		send_frame(PONG, ch, data, len);
		break;
	case ATTACH:
		do_attach(ch);
		break;
	case WINDOW:
		if ((c = find(ch)) != NULL && len == 4 && c->credit >= 0) {
			uint32_t more = get32(data);
			c->credit = more == UNLIMITED ? -1 : c->credit + more;
		}
		break;
	case EXEC:
	case EXEC_TTY:
	case EXEC_KEPT:
		do_exec(ch, data, len, type == EXEC_TTY, type == EXEC_KEPT);
		break;
	case RESIZE:
		if ((c = find(ch)) != NULL && c->tty && c->in >= 0 && len == 4) {
			struct winsize ws = {.ws_row = (unsigned short)(data[0] << 8 | data[1]),
					     .ws_col = (unsigned short)(data[2] << 8 | data[3])};
			ioctl(c->in, TIOCSWINSZ, &ws);
		}
		break;
	case STDIN_DATA:
		if ((c = find(ch)) == NULL || c->in < 0)
			break;
		if (len == 0) {
			c->in_eof = 1;
		} else {
			if (c->inbuf == NULL && (c->inbuf = malloc(CREDIT)) == NULL)
				break;
			if (len > CREDIT - c->inlen) /* beyond the credit granted: the host's bug */
				len = (uint32_t)(CREDIT - c->inlen);
			memcpy(c->inbuf + c->inlen, data, len);
			c->inlen += len;
		}
		flush_input(c);
		break;
	case SIGNAL:
		if ((c = find(ch)) != NULL && c->pid && len == 4)
			kill(-c->pid, (int)get32(data)); /* its process group: setsid made one */
		else if (c != NULL && c->sock && c->out >= 0)
			shutdown(c->out, SHUT_RDWR); /* the host side left: end the connection */
		break;
	case CONNECT:
		do_connect(ch, data, len);
		break;
	case READ_FILE:
	case WRITE_FILE:
		do_file(type, ch, data, len);
		break;
	case FSFREEZE:
	case FSTHAW:
		do_freeze(type, ch);
		break;
	case SET_CLOCK:
		do_clock(ch, data, len);
		break;
	case RESEED:
		do_reseed(ch, data, len);
		break;
	case SET_MAC:
		do_set_mac(ch, data, len);
		break;
	default:
		send_error(ch, ENOSYS, "request");
	}
}

static int open_port(void)
{
	char path[300], name[64];
	for (int tries = 0; tries < 500; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d)) != NULL) {
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			ssize_t n = fd < 0 ? -1 : read(fd, name, sizeof(name) - 1);
			if (fd >= 0)
				close(fd);
			if (n > 0 && name[n - 1] == '\n')
				n--;
			if (n > 0 && (name[n] = 0, strcmp(name, PORT_NAME) == 0)) {
				snprintf(path, sizeof(path), "/dev/%s", e->d_name);
				closedir(d);
				return open(path, O_RDWR | O_CLOEXEC);
			}
		}
		if (d)
			closedir(d);
		usleep(10000);
	}
	return -1;
}

static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_CHANNELS; i++) {
			struct channel *c = &channels[i];
			if (c->pid == pid) {
				c->pid = 0;
				c->status = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
				maybe_done(c);
			}
		}
	}
}

static void pump(struct channel *c, int *fd, int type)
{
	char buf[MAX_CHUNK];
	size_t want = c->credit < 0 || c->credit > MAX_CHUNK ? MAX_CHUNK : (size_t)c->credit;
	ssize_t n = read(*fd, buf, want);
	if (n > 0) {
		if (c->credit >= 0)
			c->credit -= n;
		if (!c->stale)
			send_frame(type, c->id, buf, (size_t)n);
		else if (c->keep)
			keep_output(buf, (size_t)n);
		return;
	}
	if (n < 0 && (errno == EINTR || errno == EAGAIN)) /* EAGAIN: shares the input's O_NONBLOCK */
		return;
	close_fd(fd);
	maybe_done(c);
}

int main(void)
{
	for (int i = 0; i < MAX_CHANNELS; i++)
		channels[i] = (struct channel){0, 0, -1, -1, -1, 0, 0, 0, 0, NULL, 0, 0, 0, 0};
	signal(SIGPIPE, SIG_IGN);
	boot_error = getenv("LOFT_BOOT_ERROR");
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	port = open_port();
	if (port < 0 || sfd < 0) {
		fprintf(stderr, "loft-agent: no port named %s\n", PORT_NAME);
		for (;;)
			pause(); /* PID 1 must not exit */
	}
	fprintf(stderr, "loft-agent: ready\n");
	static unsigned char buf[HEADER + MAX_REQUEST];
	size_t have = 0;
	struct pollfd fds[2 + 3 * MAX_CHANNELS];
	struct {
		struct channel *c;
		int *fd;
		int type;
	} who[3 * MAX_CHANNELS];
	for (;;) {
		int n = 0;
		fds[n++] = (struct pollfd){port, POLLIN, 0};
		fds[n++] = (struct pollfd){sfd, POLLIN, 0};
		for (int i = 0; i < MAX_CHANNELS; i++) {
			struct channel *c = &channels[i];
			if (c->inlen > 0 && c->in >= 0) {
				who[n - 2].c = c; who[n - 2].fd = &c->in; who[n - 2].type = 0;
				fds[n++] = (struct pollfd){c->in, POLLOUT, 0};
			}
			if (c->credit == 0)
				continue; /* its output waits until the host grants more */
			if (c->out >= 0) {
				who[n - 2].c = c; who[n - 2].fd = &c->out; who[n - 2].type = STDOUT_DATA;
				fds[n++] = (struct pollfd){c->out, POLLIN, 0};
			}
			if (c->err >= 0) {
				who[n - 2].c = c; who[n - 2].fd = &c->err; who[n - 2].type = STDERR_DATA;
				fds[n++] = (struct pollfd){c->err, POLLIN, 0};
			}
		}
		if (poll(fds, (nfds_t)n, -1) < 0)
			continue;
		if (fds[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) > 0)
				;
			reap();
		}
		for (int i = 2; i < n; i++)
			if (fds[i].revents && *who[i - 2].fd == fds[i].fd) {
				if (who[i - 2].type == 0)
					flush_input(who[i - 2].c);
				else
					pump(who[i - 2].c, who[i - 2].fd, who[i - 2].type);
			}
		if (fds[0].revents & POLLIN) {
			ssize_t r = read(port, buf + have, sizeof(buf) - have);
			if (r <= 0) {
				/* no host connected: virtio-serial reports hang-up; wait for one */
				if (r == 0 || errno != EINTR)
					usleep(20000);
				continue;
			}
			have += (size_t)r;
			size_t off = 0;
			while (have - off >= HEADER) {
				unsigned char *h = buf + off;
				uint32_t len = get32(h + 8);
				if ((h[0] << 8 | h[1]) != MAGIC || len > MAX_REQUEST) {
					off = have; /* not a frame: drop what we have, the host resyncs with PING */
					break;
				}
				if (have - off < HEADER + len)
					break;
				handle(h[2], get32(h + 4), h + HEADER, len);
				off += HEADER + len;
			}
			memmove(buf, buf + off, have - off);
			have -= off;
		} else if (fds[0].revents & (POLLHUP | POLLERR)) {
			usleep(20000); /* the host disconnected: poll again until one connects */
		}
	}
}
