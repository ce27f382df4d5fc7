//go:build !channelsapi_failpoint

package channelsapi

// failpoint marks a point where a test build (tag channelsapi_failpoint)
// can kill the process; see failpoint_on.go.
func failpoint(string) {}
