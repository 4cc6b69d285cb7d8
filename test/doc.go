// Package e2e holds Sallyport's end-to-end tests.
//
// Nothing is mocked at the boundary. TestMain builds the real sallyport binary
// with -race once; the tests then start real components as child processes on
// free loopback ports and stop them afterwards: OpenSSH sshd as the target
// server (with a throwaway Unix account), `sallyport dev` as the gateway, and
// the OpenSSH ssh, scp and sftp clients as users. A missing component is a
// failure, never a skip.
//
// The harness lives in the _test.go files beside the tests:
//
//   - sshd_test.go: sshdTarget, a throwaway account and an sshd serving it;
//   - gateway_test.go: gateway, a running `sallyport dev` with its log,
//     admin CLI (Ctl) and clients (SSH, SCP, SFTP);
//   - client_test.go: running OpenSSH clients without a tty, answering
//     prompts through an SSH_ASKPASS script that reads 0600 files;
//   - totp_test.go: an RFC 6238 generator independent of the product's;
//   - leak_test.go: the end-of-suite scan that fails if an injected
//     credential shows up anywhere outside the vault;
//   - bench_test.go: the benchmarks behind `make bench`, each measuring the
//     proxy side by side with direct OpenSSH to the same sshd (see
//     BENCHMARKS.md). When -test.bench selects benchmarks, TestMain builds the
//     binary without -race, so that they measure what ships;
//   - bench_connector_test.go: in-process benchmarks of the site connectors
//     (credential round trips over Memory, the built-in connector and
//     RabbitMQ; sealed work items over RabbitMQ against amqp091-go alone);
//   - bench_cluster_test.go: SSH setup through a separate engine of a
//     vault cluster against `sallyport dev`.
//
// Every client run through the gateway connects from its own loopback
// source address (127.0.x.y), so that the gateway's per-source failed-login
// limit never couples one test to another.
//
// Run with `make test` (which runs test/setup.sh first) or, with the
// dependencies installed and as root (the target needs a Unix account):
//
//	go test -race -count=1 ./test/...
//
// Set SPT_E2E_KEEP=1 to keep the suite's temporary directory (the sshd and
// sallyport logs, the data dir) after a passing run; a failing end-of-suite
// check always keeps it.
package e2e
