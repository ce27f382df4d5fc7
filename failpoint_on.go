//go:build channelsapi_failpoint

package channelsapi

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Built with the tag channelsapi_failpoint only, for the crash tests:
// CHANNELSAPI_FAILPOINT=after-commit:N kills the process with SIGKILL at
// the Nth pass of the point after-commit (a transaction's COMMIT has
// returned, its changes are not yet published).
var (
	failName  string
	failAt    int64
	failCount atomic.Int64
)

func init() {
	name, n, ok := strings.Cut(os.Getenv("CHANNELSAPI_FAILPOINT"), ":")
	if !ok {
		return
	}
	at, err := strconv.ParseInt(n, 10, 64)
	if err != nil || at <= 0 {
		return
	}
	failName, failAt = name, at
}

func failpoint(name string) {
	if name != failName || failCount.Add(1) != failAt {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not delivered synchronously
}
