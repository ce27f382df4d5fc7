package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serverProc is a running server subprocess.
type serverProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	hello hello
	http  *http.Client
	done  chan error
}

// startServer re-executes this binary as a server (or starts the centrifuge
// peer, which speaks the same contract), pinned to the server CPU
// when taskset is available, and waits for its hello line.
func (d *driver) startServer(ctx context.Context, cfg serverConfig) (*serverProc, error) {
	args := []string{
		"-role=server", "-mode=" + cfg.mode, "-rows=" + strconv.Itoa(cfg.rows),
		"-sndbuf=" + strconv.Itoa(cfg.sndbuf), "-unlimited=" + strconv.FormatBool(cfg.unlimited),
	}
	if cfg.db != "" {
		args = append(args, "-db="+cfg.db)
	}
	if cfg.queries {
		args = append(args, "-queries")
	}
	if d.cfg.profile != "" {
		d.profiles++
		args = append(args, "-cpuprofile="+filepath.Join(d.cfg.profile, fmt.Sprintf("%s-%02d-%s.pprof", d.scenario, d.profiles, cfg.mode)))
	}
	exe := d.exe
	if cfg.mode == modeCentrifuge {
		exe = d.peer.exe
		if exe == "" {
			return nil, errors.New("the centrifuge peer is not built")
		}
	}
	var cmd *exec.Cmd
	if d.serverCPU != "" {
		cmd = exec.Command(d.taskset, append([]string{"-c", d.serverCPU, exe}, args...)...)
	} else {
		cmd = exec.Command(exe, args...)
	}
	cmd.Stderr = os.Stderr
	if cfg.dsn != "" {
		cmd.Env = append(os.Environ(), dsnEnv+"="+cfg.dsn)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	p := &serverProc{cmd: cmd, stdin: stdin, done: make(chan error, 1), http: &http.Client{Timeout: 90 * time.Second}}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
		p.done <- cmd.Wait()
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			p.stop()
			return nil, errors.New("server exited before it was ready")
		}
		if err := json.Unmarshal([]byte(line), &p.hello); err != nil {
			p.stop()
			return nil, fmt.Errorf("server hello %q: %w", line, err)
		}
	case <-time.After(30 * time.Second):
		p.stop()
		return nil, errors.New("server not ready after 30s")
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
	return p, nil
}

// stop closes the server's stdin, which ends it, and kills it if it has not
// exited after 5 s.
func (p *serverProc) stop() {
	_ = p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// raw reports whether p is a melody server without the library.
func (p *serverProc) raw() bool { return strings.HasPrefix(p.hello.Mode, "raw") }

// centrifuge reports whether p is the centrifuge peer.
func (p *serverProc) centrifuge() bool { return p.hello.Mode == modeCentrifuge }

func (p *serverProc) wsURL() string { return "ws://" + p.hello.Addr + "/ws" }

func (p *serverProc) url(path string) string { return "http://" + p.hello.Addr + path }

func (p *serverProc) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, p.url(path), nil)
	if err != nil {
		return err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, out)
}

func (p *serverProc) stats(ctx context.Context) (statsReply, error) {
	var r statsReply
	err := p.call(ctx, http.MethodGet, "/ctl/stats", &r)
	return r, err
}

func (p *serverProc) mem(ctx context.Context) (memReply, error) {
	var r memReply
	err := p.call(ctx, http.MethodGet, "/ctl/mem", &r)
	return r, err
}

// writes asks the server for count updates (see benchServer.writes).
func (p *serverProc) writes(ctx context.Context, count int, rate float64, pk, pks, pad int) (writesReply, error) {
	var r writesReply
	path := fmt.Sprintf("/ctl/writes?count=%d&rate=%g&pk=%d&pks=%d&pad=%d", count, rate, pk, pks, pad)
	err := p.call(ctx, http.MethodPost, path, &r)
	return r, err
}

// writesOf asks the server for count back-to-back updates of the row pk
// of stream's model: Item (streamName) or QItem (qStreamName).
func (p *serverProc) writesOf(ctx context.Context, stream string, count, pk int) (writesReply, error) {
	var r writesReply
	path := fmt.Sprintf("/ctl/writes?count=%d&pk=%d&stream=%s", count, pk, stream)
	err := p.call(ctx, http.MethodPost, path, &r)
	return r, err
}

// waitConns waits until the server counts conns connections and subs
// subscribers (lib mode; raw servers report 0 subscribers).
func (p *serverProc) waitConns(ctx context.Context, conns, subs int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := p.stats(ctx)
		if err != nil {
			return err
		}
		if st.Connections == conns && st.Subscribers == subs {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server has %d connections, %d subscribers; want %d, %d", st.Connections, st.Subscribers, conns, subs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// updates asks a writers server for one round (see writersServer.updates).
func (p *serverProc) updates(ctx context.Context, variant string, writers int, dur time.Duration) (updatesReply, error) {
	var r updatesReply
	path := fmt.Sprintf("/ctl/updates?variant=%s&writers=%d&ms=%d", variant, writers, dur.Milliseconds())
	err := p.call(ctx, http.MethodPost, path, &r)
	return r, err
}
