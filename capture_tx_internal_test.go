package channelsapi

// This file tests the sequencer's gate (capture_tx.go) on its own: commits
// inside it at once, a holder waiting for them, and a holder giving up.

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// entered starts a commit entering g and returns a channel closed once it
// is inside.
func entered(g *gate) chan struct{} {
	in := make(chan struct{})
	go func() {
		g.enter()
		close(in)
	}()
	return in
}

// waitClosed waits until a holder has closed g to new commits.
func waitClosed(t *testing.T, g *gate) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.mu.Lock()
		closed := g.closed != nil
		g.mu.Unlock()
		if closed {
			return
		}
		require.True(t, time.Now().Before(deadline), "no holder closed the gate")
		runtime.Gosched()
	}
}

func TestGateHoldWaitsForCommitsAndKeepsNewOnesOut(t *testing.T) {
	var g gate
	g.enter()
	g.enter() // commits do not wait for each other
	held := make(chan func())
	go func() {
		release, ok := g.hold(time.Minute)
		assert.True(t, ok)
		held <- release
	}()
	g.leave()
	waitClosed(t, &g)
	select {
	case <-held:
		t.Fatal("held with a commit inside")
	case <-time.After(20 * time.Millisecond):
	}
	late := entered(&g) // arrives while the holder waits: kept out
	g.leave()
	release := <-held
	select {
	case <-late:
		t.Fatal("a commit entered a held gate")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	<-late
	g.leave()
}

func TestGateHolderGivesUp(t *testing.T) {
	var g gate
	g.enter() // a COMMIT that waits for a transaction held back at the gate
	late := make(chan struct{})
	go func() {
		release, ok := g.hold(50 * time.Millisecond)
		assert.False(t, ok, "held with a commit inside")
		assert.Nil(t, release)
		close(late)
	}()
	<-late
	in := entered(&g)
	<-in // the gate is open again
	g.leave()
	g.leave()
	release, ok := g.hold(time.Minute)
	require.True(t, ok, "nothing inside: held at once")
	release()
}
