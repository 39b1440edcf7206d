//go:build ignore

// nfs4hold: an NFSv4 client on libnfs that holds one open file (and, on
// request, a lock on it) across commands read from stdin, so that a lab
// test can ask, after a failover, whether the same handle still works.
// The protocol logic (SETCLIENTID, OPEN, LOCK, what happens on errors and
// reconnects) is libnfs's; this program only drives its sync API.
//
// Usage: nfs4hold 'nfs://SERVER/export/FILE?version=4'
// Commands, one per line; one answer line each, "ok [data]" or
// "err <errno> <libnfs error text>":
//
//	open           nfs_open(O_RDWR)
//	lock           nfs_lockf(NFS4_F_TLOCK, whole file: length all ones, as
//	               NFSv4 says; 0 is NFS4ERR_INVAL): fails at once if held
//	unlock         nfs_lockf(NFS4_F_ULOCK)
//	write TEXT     nfs_pwrite(TEXT) at offset 0
//	read           nfs_pread of up to 200 bytes at offset 0
//	quit
//
// libnfs 4.0.0 sends no RENEW: an idle client loses its lease (and its
// locks) after the server's lease time. While idle, nfs4hold reads one
// byte through the open file every keepaliveMs, as an application doing
// I/O would; in NFSv4.0 an operation with the open's stateid renews the
// lease. The outcome goes to stderr, the answers alone to stdout.
//
// Build: cc -o nfs4hold nfs4hold.c -lnfs (libnfs-dev).
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <poll.h>

#include <nfsc/libnfs.h>

// callTimeoutMs bounds every call: libnfs reconnects for ever by default,
// and a test must get an answer, not a hang.
#define callTimeoutMs 15000
#define keepaliveMs 3000

static void answer(struct nfs_context *nfs, int rc, const char *data)
{
	if (rc < 0)
		printf("err %d %s\n", -rc, nfs_get_error(nfs));
	else if (data)
		printf("ok %s\n", data);
	else
		printf("ok\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s 'nfs://SERVER/PATH/FILE?version=4'\n", argv[0]);
		return 2;
	}
	struct nfs_context *nfs = nfs_init_context();
	if (!nfs) {
		fprintf(stderr, "nfs_init_context failed\n");
		return 1;
	}
	struct nfs_url *url = nfs_parse_url_full(nfs, argv[1]);
	if (!url) {
		fprintf(stderr, "parse %s: %s\n", argv[1], nfs_get_error(nfs));
		return 1;
	}
	nfs_set_timeout(nfs, callTimeoutMs);
	if (nfs_mount(nfs, url->server, url->path) != 0) {
		fprintf(stderr, "mount %s:%s: %s\n", url->server, url->path, nfs_get_error(nfs));
		return 1;
	}
	printf("mounted\n");
	fflush(stdout);

	struct nfsfh *fh = NULL;
	char line[512];
	// unbuffered, so that poll() sees every byte not yet read
	setvbuf(stdin, NULL, _IONBF, 0);
	for (;;) {
		struct pollfd pfd = {.fd = 0, .events = POLLIN};
		if (poll(&pfd, 1, keepaliveMs) == 0) {
			if (fh) {
				char b;
				int rc = nfs_pread(nfs, fh, 0, 1, &b);
				if (rc < 0)
					fprintf(stderr, "keepalive read: %s\n", nfs_get_error(nfs));
			}
			continue;
		}
		if (!fgets(line, sizeof(line), stdin))
			break;
		line[strcspn(line, "\n")] = 0;
		int rc;
		if (!strcmp(line, "open")) {
			rc = nfs_open(nfs, url->file, O_RDWR, &fh);
			answer(nfs, rc, NULL);
		} else if (!fh && strcmp(line, "quit")) {
			printf("err %d no open file\n", EBADF);
			fflush(stdout);
		} else if (!strcmp(line, "lock")) {
			answer(nfs, nfs_lockf(nfs, fh, NFS4_F_TLOCK, UINT64_MAX), NULL);
		} else if (!strcmp(line, "unlock")) {
			answer(nfs, nfs_lockf(nfs, fh, NFS4_F_ULOCK, UINT64_MAX), NULL);
		} else if (!strncmp(line, "write ", 6)) {
			const char *text = line + 6;
			rc = nfs_pwrite(nfs, fh, 0, strlen(text), text);
			answer(nfs, rc, NULL);
		} else if (!strcmp(line, "read")) {
			char buf[201];
			rc = nfs_pread(nfs, fh, 0, sizeof(buf) - 1, buf);
			if (rc >= 0) {
				buf[rc] = 0;
				buf[strcspn(buf, "\n")] = 0;
			}
			answer(nfs, rc, rc >= 0 ? buf : NULL);
		} else if (!strcmp(line, "quit")) {
			break;
		} else {
			printf("err %d unknown command\n", EINVAL);
			fflush(stdout);
		}
	}
	if (fh)
		nfs_close(nfs, fh);
	nfs_destroy_url(url);
	nfs_destroy_context(nfs);
	return 0;
}
