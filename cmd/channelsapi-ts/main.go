// Command channelsapi-ts writes the TypeScript types of a channelsapi server
// for the client of clients/typescript: per stream the model (readonly
// fields marked), its write and patch shapes, the filter keys with their
// lookups, the ordering fields and the custom actions, read from the
// server's AsyncAPI and OpenAPI documents (WithAPIDocs), each a file or a
// URL.
//
//	go run ./cmd/channelsapi-ts -asyncapi http://localhost:8080/api/asyncapi.json \
//	    -openapi http://localhost:8080/api/openapi.json -o src/api.gen.ts
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/channelsapi/channelsapi/internal/tsgen"
)

func main() {
	asyncapi := flag.String("asyncapi", "", "the AsyncAPI 3 document: a file or an http(s) URL")
	openapi := flag.String("openapi", "", "the OpenAPI 3.1 document: a file or an http(s) URL")
	out := flag.String("o", "-", "the TypeScript file to write; - for standard output")
	flag.Parse()
	if err := run(*asyncapi, *openapi, *out); err != nil {
		fmt.Fprintln(os.Stderr, "channelsapi-ts:", err)
		os.Exit(1)
	}
}

func run(asyncapi, openapi, out string) error {
	if asyncapi == "" || openapi == "" {
		return errors.New("both -asyncapi and -openapi are required")
	}
	ad, err := load(asyncapi)
	if err != nil {
		return err
	}
	od, err := load(openapi)
	if err != nil {
		return err
	}
	src, err := tsgen.Generate(ad, od, sourceName(asyncapi))
	if err != nil {
		return err
	}
	if out == "-" {
		_, err = os.Stdout.Write(src)
		return err
	}
	return os.WriteFile(out, src, 0o644)
}

// sourceName is how the header names the documents: the file's name, or
// the URL.
func sourceName(s string) string {
	if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
		return s
	}
	return s[strings.LastIndex(s, "/")+1:]
}

// load reads a file, or GETs an http(s) URL (at most 30 s, 32 MiB).
func load(src string) ([]byte, error) {
	if !strings.HasPrefix(src, "http://") && !strings.HasPrefix(src, "https://") {
		return os.ReadFile(src)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", src, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 32<<20))
}
