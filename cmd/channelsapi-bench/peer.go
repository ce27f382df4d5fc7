package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// modeCentrifuge is the server mode of the centrifuge peer
// (peers/centrifuge): centrifugal/centrifuge's Node and WebSocket handler
// publishing the frames channelsapi would send, after the same GORM update.
const modeCentrifuge = "centrifuge"

// peerBuild is the centrifuge peer's binary, built once per run.
type peerBuild struct {
	exe  string // empty: not built, note says why
	dir  string // the temporary directory holding exe
	note string
}

// peerScenarios are the scenarios with centrifuge rows.
var peerScenarios = []string{"s1", "s2", "s5", "s9"}

// buildPeer builds the centrifuge peer from its module in dir (a module of
// its own, so that the library's go.mod does not grow) into a temporary
// directory. The toolchain is the local one: GOTOOLCHAIN=local, so that a
// go line the local Go does not satisfy fails the build instead of
// downloading another Go. A failure leaves exe empty and says why in note.
func buildPeer(dir string) peerBuild {
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return peerBuild{note: fmt.Sprintf("centrifuge rows skipped: no peers module at %s (run from the repository root, or set -peers)", dir)}
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return peerBuild{note: "centrifuge rows skipped: no go command to build the peer with"}
	}
	tmp, err := os.MkdirTemp("", "channelsapi-bench-peer-")
	if err != nil {
		return peerBuild{note: "centrifuge rows skipped: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	exe := filepath.Join(tmp, "centrifuge")
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", exe, "./centrifuge")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(tmp)
		msg := strings.TrimSpace(string(out))
		if len(msg) > 400 {
			msg = msg[:400] + "..."
		}
		return peerBuild{note: fmt.Sprintf("centrifuge rows skipped: building the peer in %s failed: %v: %s", dir, err, msg)}
	}
	return peerBuild{exe: exe, dir: tmp}
}

// remove deletes the peer's binary.
func (b peerBuild) remove() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}

// fanOutModes are the servers a fan-out comparison runs: channelsapi, raw
// melody and, when its peer was built, centrifuge.
func (d *driver) fanOutModes() []string {
	if d.peer.exe == "" {
		return []string{"lib", "raw"}
	}
	return []string{"lib", "raw", modeCentrifuge}
}

// peerNote appends to res why the centrifuge rows are missing, if they are.
func (d *driver) peerNote(res *scenarioResult) {
	if d.peer.note != "" {
		res.Notes = append(res.Notes, d.peer.note)
	}
}
