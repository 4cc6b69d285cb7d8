// Command sallyport is the single binary of the Sallyport privileged-access
// gateway. Subcommands:
//
//	sallyport dev     vault and engine in one process (embedded defaults)
//	sallyport vault   the vault daemon
//	sallyport engine  an engine at a site
//	sallyport ctl   the admin CLI over the vault's API
//	sallyport keys  key setup, KEK rotation and migration to a PKCS#11 token
//
// This package only wires packages together; the logic lives in them.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	tuneGC()
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// tuneGC trades memory for CPU unless the operator chose otherwise. Relaying
// SSH allocates a fresh buffer per packet (inside x/crypto/ssh), so with the
// default GOGC=100 garbage collection costs about a third of the proxy's CPU
// in bulk transfers. GOGC=400 cuts that; the soft memory limit keeps bursts
// (argon2id takes 19 MiB per login) from growing the heap without bound.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(1 << 30)
	}
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "dev":
		return devMain(args[1:], stderr)
	case "vault":
		return vaultMain(args[1:], stderr)
	case "engine":
		return engineMain(args[1:], stderr)
	case "ctl":
		return ctlMain(args[1:], stdin, stdout, stderr)
	case "keys":
		return keysMain(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "sallyport", version)
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "sallyport: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: sallyport <command> [flags]

commands:
  dev      run the vault and one engine in one process (embedded defaults)
  vault    run the vault: the store, the admin and engine API, the built-in site connector
  engine   run an engine at a site: it registers with the vault and runs the SSH gateway
  ctl      administer users and secrets through the vault API
  keys     create, rotate and migrate keys (soft keystore or PKCS#11 token)
  version  print the version

Run 'sallyport <command> -h' for a command's flags.
`)
}
