package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// postgresEnv names a PostgreSQL for S7 instead of a throwaway server.
const postgresEnv = "CHANNELSAPI_BENCH_POSTGRES"

// pgServer is the PostgreSQL S7 writes to: the one postgresEnv names, or a
// throwaway server in a temporary directory, started with synchronous
// commit (fsync=on) and removed by stop.
type pgServer struct {
	dsn  string
	desc string // what it is, for the notes

	dir   string   // throwaway: the temporary directory (data, log, socket)
	pgCtl string   // throwaway: pg_ctl
	as    []string // throwaway: the command prefix that runs as the postgres user, when root
}

// startPostgres returns the PostgreSQL to use. It returns nil and a reason
// when there is none (no DSN and no initdb found); an error when one was
// found but did not start.
func (d *driver) startPostgres(ctx context.Context) (pg *pgServer, skip string, err error) {
	if dsn := os.Getenv(postgresEnv); dsn != "" {
		return &pgServer{dsn: dsn, desc: "the server " + postgresEnv + " names (its own settings)"}, "", nil
	}
	bin := pgBinDir()
	if bin == "" {
		return nil, "no PostgreSQL: " + postgresEnv + " is not set and no initdb was found (/usr/lib/postgresql/*/bin, PATH)", nil
	}
	pg = &pgServer{pgCtl: filepath.Join(bin, "pg_ctl")}
	if pg.dir, err = os.MkdirTemp("", "channelsapi-bench-pg-"); err != nil {
		return nil, "", err
	}
	defer func() {
		if err != nil {
			pg.stop()
		}
	}()
	// The whole server (postmaster and backends) runs on both of the
	// bench's CPUs when the bench is pinned; it would inherit the load
	// generator's CPU otherwise.
	if d.serverCPU != "" {
		pg.as = []string{d.taskset, "-c", d.clientCPU + "," + d.serverCPU}
	}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, "", fmt.Errorf("running as root and no postgres user to run PostgreSQL as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(pg.dir, uid, gid); err != nil {
			return nil, "", err
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			return nil, "", fmt.Errorf("running as root and no runuser: %w", err)
		}
		pg.as = append(pg.as, runuser, "-u", "postgres", "--")
	}
	data := filepath.Join(pg.dir, "data")
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	// --no-sync: initdb does not flush the files it creates (the server
	// itself runs with fsync=on).
	if out, err := pg.run(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, "", fmt.Errorf("initdb: %w: %s", err, lastLines(out, 5))
	}
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s -c fsync=on -c synchronous_commit=on -c max_connections=50", port, pg.dir)
	if out, err := pg.run(ctx, pg.pgCtl, "-D", data, "-l", filepath.Join(pg.dir, "postgres.log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.dir, "postgres.log"))
		return nil, "", fmt.Errorf("pg_ctl start: %w: %s %s", err, lastLines(out, 5), lastLines(log, 5))
	}
	version := "PostgreSQL"
	if out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output(); err == nil {
		version = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "postgres (PostgreSQL) "))
		version = "PostgreSQL " + version
	}
	pg.dsn = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	pg.desc = fmt.Sprintf("%s, a throwaway server in %s, fsync=on, synchronous_commit=on", version, pg.dir)
	if onTmpfs(pg.dir) {
		pg.desc += " (on tmpfs, where fsync costs nothing)"
	}
	d.logf("  %s on 127.0.0.1:%d", pg.desc, port)
	return pg, "", nil
}

// run runs a PostgreSQL program as the postgres user when needed.
func (pg *pgServer) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append(slices.Clone(pg.as), name)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = pg.dir
	return cmd.CombinedOutput()
}

// stop stops a throwaway server and removes its directory; it does nothing
// for a server it did not start.
func (pg *pgServer) stop() {
	if pg == nil || pg.dir == "" {
		return
	}
	data := filepath.Join(pg.dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		defer cancel()
		if out, err := pg.run(ctx, pg.pgCtl, "-D", data, "-m", "fast", "-w", "-t", "30", "stop"); err != nil {
			fmt.Fprintf(os.Stderr, "note: pg_ctl stop: %v: %s\n", err, lastLines(out, 3))
			_, _ = pg.run(ctx, pg.pgCtl, "-D", data, "-m", "immediate", "-w", "stop")
		}
	}
	if err := os.RemoveAll(pg.dir); err != nil {
		fmt.Fprintf(os.Stderr, "note: remove %s: %v\n", pg.dir, err)
	}
}

// pgBinDir is the directory of the newest initdb and pg_ctl found, or "".
func pgBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, dir := range dirs {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "pg_ctl")) {
			return dir
		}
	}
	return ""
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// freePort is a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	addr, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("no TCP address")
	}
	return addr.Port, nil
}

// onTmpfs reports whether path is on a tmpfs.
func onTmpfs(path string) bool {
	const tmpfsMagic = 0x01021994
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Type == tmpfsMagic
}

// lastLines is the last n lines of b, on one line.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], " | ")
}
