package main

import (
	"context"
	"crypto"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sallyport/sallyport/audit"
	"github.com/sallyport/sallyport/config"
	"github.com/sallyport/sallyport/hsm"
	"github.com/sallyport/sallyport/vault"
)

// openKeys opens the configured key provider: the soft keystore in the data
// directory, or a PKCS#11 token. There is no fallback from one to the other.
func openKeys(c *config.File, data string, log *slog.Logger) (hsm.Provider, error) {
	if c.Keys == nil || c.Keys.Provider == config.KeysSoft {
		path := filepath.Join(data, "keystore.json")
		keys, err := hsm.OpenSoft(path)
		if err != nil {
			return nil, err
		}
		log.Warn("using the soft keystore: keys are in a file, which is for development only; use a PKCS#11 token in production",
			"path", path)
		return keys, nil
	}
	t, err := openToken(c, log)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return t, nil
}

// openToken opens the PKCS#11 token the configuration names.
func openToken(c *config.File, log *slog.Logger) (*hsm.PKCS11, error) {
	if c.Keys == nil || c.Keys.PKCS11 == nil {
		return nil, errors.New("keys: no pkcs11 section in the configuration file")
	}
	pin, err := c.PKCS11PIN()
	if err != nil {
		return nil, err
	}
	defer clear(pin)
	p := c.Keys.PKCS11
	return hsm.OpenPKCS11(hsm.PKCS11Config{
		Module:     c.PKCS11Module(),
		TokenLabel: p.TokenLabel,
		PIN:        pin,
		Sessions:   p.Sessions,
	}, log.With("component", "pkcs11"))
}

// providerName describes where keys live, for messages.
func providerName(c *config.File) string {
	if c.Keys != nil && c.Keys.Provider == config.KeysPKCS11 {
		return fmt.Sprintf("token %q", c.Keys.PKCS11.TokenLabel)
	}
	return "the soft keystore"
}

// The long-lived keys besides the KEK: all ECDSA P-256.
var signerLabels = []string{hsm.LabelSSHHostKey, hsm.LabelAuditKey, hsm.LabelEngineKey, hsm.LabelRDPKey}

func keysMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, `usage: sallyport keys <command> [--data DIR] [--config FILE]

commands:
  init        create the keys that are missing (KEK for a new vault, SSH host key,
              audit, engine and RDP TLS keys) in the configured provider, and print the
              SSH host key
  rotate-kek  re-wrap every data key under a new key-encryption key; resumes an
              interrupted rotation
  migrate     move a vault from the soft keystore (DIR/keystore.json) to the
              PKCS#11 token the configuration names; resumes if interrupted
  status      show the key-encryption keys in use and what is left to re-wrap
  reveal NAME print the credential stored for secret NAME (break-glass, for when
              the bastion is down; recorded in the secret's history and audited)

They work offline: stop 'sallyport dev' first. PINs are read from the file or
environment variable the configuration names, never from the command line.
`)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd := args[0]
	fs := flag.NewFlagSet("sallyport keys "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "./.sallyport", "data directory")
	cfgPath := fs.String("config", "", "configuration file (YAML): the keys section chooses the provider")
	batch := fs.Int("batch", 100, "rotate-kek, migrate: values re-wrapped per step")
	destroy := fs.Bool("destroy-old", false, "rotate-kek: destroy the old key-encryption key once nothing uses it")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var name string
	if cmd == "reveal" {
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, "sallyport keys reveal: want the secret's NAME")
			return 2
		}
		name = fs.Arg(0)
	} else if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "sallyport keys %s: unexpected argument %q\n", cmd, fs.Arg(0))
		return 2
	}
	cfg := &config.File{}
	if *cfgPath != "" {
		c, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "sallyport keys %s: %v\n", cmd, err)
			return 2
		}
		cfg = c
	} else if c, err := config.Parse(nil, "."); err == nil {
		cfg = c
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	k := keysCmd{cfg: cfg, data: *data, out: stdout, log: log, batch: *batch}
	var err error
	switch cmd {
	case "init":
		err = k.init(ctx)
	case "rotate-kek":
		err = k.rotate(ctx, *destroy)
	case "migrate":
		err = k.migrate(ctx)
	case "status":
		err = k.status(ctx)
	case "reveal":
		err = k.reveal(ctx, name)
	default:
		fmt.Fprintf(stderr, "sallyport keys: unknown command %q\n", cmd)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "sallyport keys %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

type keysCmd struct {
	cfg   *config.File
	data  string
	out   io.Writer
	log   *slog.Logger
	batch int
}

func (k keysCmd) dbPath() string { return filepath.Join(k.data, "vault.db") }

// reveal prints a secret's credential: a password on one line, a private
// key as it was stored.
func (k keysCmd) reveal(ctx context.Context, name string) error {
	v, _, done, err := k.openVault(ctx)
	if err != nil {
		return err
	}
	defer done()
	who := "sallyport keys reveal"
	if u, err := user.Current(); err == nil {
		who += " by " + u.Username
	}
	cred, kind, err := v.Reveal(ctx, name, who)
	if err != nil {
		return err
	}
	defer clear(cred)
	if _, err := k.out.Write(cred); err != nil {
		return err
	}
	if kind == vault.KindPassword {
		_, err = io.WriteString(k.out, "\n")
	}
	return err
}

// openVault takes the data directory's lock and opens the configured key
// provider and the vault on it; done releases all three.
func (k keysCmd) openVault(ctx context.Context) (_ *vault.Vault, _ hsm.Provider, done func(), err error) {
	release, err := lockData(k.data)
	if err != nil {
		return nil, nil, nil, err
	}
	keys, err := openKeys(k.cfg, k.data, k.log)
	if err != nil {
		release()
		return nil, nil, nil, err
	}
	v, err := vault.Open(ctx, k.dbPath(), keys, k.log, audit.Log{L: k.log})
	if err != nil {
		_ = keys.Close()
		release()
		return nil, nil, nil, err
	}
	return v, keys, func() { _ = v.Close(); _ = keys.Close(); release() }, nil
}

func (k keysCmd) init(ctx context.Context) error {
	release, err := lockData(k.data)
	if err != nil {
		return err
	}
	defer release()
	keys, err := openKeys(k.cfg, k.data, k.log)
	if err != nil {
		return err
	}
	defer keys.Close()
	where := providerName(k.cfg)
	if _, err := os.Stat(k.dbPath()); errors.Is(err, os.ErrNotExist) {
		if err := ensure(ctx, k.out, where, hsm.LabelKEK, keys.GenerateAESKey, keys.HasKey); err != nil {
			return err
		}
	} else {
		// An existing vault keeps its KEK: a fresh one could open nothing.
		v, err := vault.Open(ctx, k.dbPath(), keys, k.log, audit.Log{L: k.log})
		if err != nil {
			return err
		}
		st, err := v.KEKState(ctx)
		_ = v.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(k.out, "%s: key-encryption key of the existing vault, present\n", st.Current)
	}
	for _, l := range signerLabels {
		if err := ensure(ctx, k.out, where, l, keys.GenerateSigner, keys.HasKey); err != nil {
			return err
		}
	}
	return printHostKey(ctx, k.out, keys)
}

// sameHostKey checks that the SSH host key on the token is the one in the
// soft keystore, so that a migration never leaves clients facing a host key
// they do not know (or a token holding half a key pair).
func sameHostKey(ctx context.Context, soft, token hsm.Provider, where string) error {
	want, err := soft.Signer(ctx, hsm.LabelSSHHostKey)
	if err != nil {
		return fmt.Errorf("SSH host key: %w", err)
	}
	got, err := token.Signer(ctx, hsm.LabelSSHHostKey)
	if err != nil {
		return fmt.Errorf("SSH host key on %s: %w", where, err)
	}
	wantPub, ok := want.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !wantPub.Equal(got.Public()) {
		return fmt.Errorf("%s on %s is not the SSH host key of the soft keystore, which clients know: "+
			"delete it from the token to move the soft keystore's key there", hsm.LabelSSHHostKey, where)
	}
	return nil
}

// ensure creates the key called label with gen unless it exists.
func ensure(ctx context.Context, out io.Writer, where, label string,
	gen func(context.Context, string) error, has func(context.Context, string) (bool, error)) error {
	ok, err := has(ctx, label)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	if ok {
		fmt.Fprintf(out, "%s: present in %s\n", label, where)
		return nil
	}
	if err := gen(ctx, label); err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	fmt.Fprintf(out, "%s: created in %s\n", label, where)
	return nil
}

// printHostKey prints the SSH host key and its fingerprint, for clients'
// known_hosts files.
func printHostKey(ctx context.Context, out io.Writer, keys hsm.Provider) error {
	s, err := keys.Signer(ctx, hsm.LabelSSHHostKey)
	if err != nil {
		return err
	}
	pub, err := gossh.NewPublicKey(s.Public())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "SSH host key: %s", gossh.MarshalAuthorizedKey(pub))
	fmt.Fprintf(out, "SSH host key fingerprint: %s\n", gossh.FingerprintSHA256(pub))
	return nil
}

func (k keysCmd) status(ctx context.Context) error {
	v, _, done, err := k.openVault(ctx)
	if err != nil {
		return err
	}
	defer done()
	st, err := v.KEKState(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(k.out, "current KEK: %s\n", st.Current)
	if st.Target != "" {
		fmt.Fprintf(k.out, "rotation to %s unfinished: %d values left\n", st.Target, st.Pending)
	}
	return nil
}

func (k keysCmd) rotate(ctx context.Context, destroy bool) error {
	v, keys, done, err := k.openVault(ctx)
	if err != nil {
		return err
	}
	defer done()
	old, err := k.rewrapAll(ctx, v, keys)
	if err != nil {
		return err
	}
	if destroy {
		if err := keys.DeleteKey(ctx, old); err != nil {
			return fmt.Errorf("the rotation is complete, but destroying the old key %s failed: %w", old, err)
		}
		fmt.Fprintf(k.out, "destroyed the old key-encryption key %s\n", old)
	} else {
		fmt.Fprintf(k.out, "the old key-encryption key %s is kept: it still opens backups taken before the rotation; "+
			"destroy it with --destroy-old once you no longer need them\n", old)
	}
	return nil
}

// rewrapAll starts (or resumes) a rotation to a new KEK on keys, re-wraps
// every value, and finishes it. It returns the old KEK's label.
func (k keysCmd) rewrapAll(ctx context.Context, v *vault.Vault, keys hsm.Provider) (string, error) {
	st, err := v.KEKState(ctx)
	if err != nil {
		return "", err
	}
	target := st.Target
	if target == "" {
		target = "sallyport-kek-" + time.Now().UTC().Format("20060102T150405Z")
	} else {
		fmt.Fprintf(k.out, "resuming the rotation from %s to %s\n", st.Current, target)
	}
	// Record the target before creating it, so that a run killed in
	// between resumes with the same key.
	if target, err = v.BeginKEKRotation(ctx, target); err != nil {
		return "", err
	}
	ok, err := keys.HasKey(ctx, target)
	if err != nil {
		return "", err
	}
	if !ok {
		if err := keys.GenerateAESKey(ctx, target); err != nil {
			return "", fmt.Errorf("create %s: %w", target, err)
		}
	}
	if st, err = v.KEKState(ctx); err != nil {
		return "", err
	}
	total, done := st.Pending, 0
	for {
		n, err := v.RewrapStep(ctx, k.batch)
		if err != nil {
			return "", err
		}
		if n == 0 {
			break
		}
		done += n
		fmt.Fprintf(k.out, "re-wrapped %d/%d\n", done, total)
	}
	old, err := v.FinishKEKRotation(ctx)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(k.out, "key-encryption key is now %s (was %s)\n", target, old)
	return old, nil
}

func (k keysCmd) migrate(ctx context.Context) error {
	if k.cfg.Keys == nil || k.cfg.Keys.Provider != config.KeysPKCS11 {
		return errors.New("the configuration must name the target token: keys: {provider: pkcs11, pkcs11: {...}}")
	}
	release, err := lockData(k.data)
	if err != nil {
		return err
	}
	defer release()
	softPath := filepath.Join(k.data, "keystore.json")
	if _, err := os.Stat(softPath); err != nil {
		return fmt.Errorf("no soft keystore to migrate from: %w", err)
	}
	soft, err := hsm.OpenSoft(softPath)
	if err != nil {
		return err
	}
	defer soft.Close()
	token, err := openToken(k.cfg, k.log)
	if err != nil {
		return err
	}
	defer token.Close()
	where := providerName(k.cfg)
	// The host key moves, so that clients' known_hosts stay valid; the
	// other signers are made fresh on the token.
	if ok, err := token.HasKey(ctx, hsm.LabelSSHHostKey); err != nil {
		return err
	} else if ok {
		// Moved by an earlier run, or made some other way: only the key
		// clients already know will do.
		if err := sameHostKey(ctx, soft, token, where); err != nil {
			return err
		}
	} else {
		key, err := soft.ExportSigner(hsm.LabelSSHHostKey)
		if err != nil {
			return fmt.Errorf("SSH host key: %w", err)
		}
		if err := token.ImportSigner(ctx, hsm.LabelSSHHostKey, key); err != nil {
			return fmt.Errorf("SSH host key: %w", err)
		}
		fmt.Fprintf(k.out, "%s: moved to %s\n", hsm.LabelSSHHostKey, where)
	}
	for _, l := range []string{hsm.LabelAuditKey, hsm.LabelEngineKey} {
		if err := ensure(ctx, k.out, where, l, token.GenerateSigner, token.HasKey); err != nil {
			return err
		}
	}
	v, err := vault.Open(ctx, k.dbPath(), token, k.log, audit.Log{L: k.log}, vault.WithFallbackKeys(soft))
	if err != nil {
		return err
	}
	defer v.Close()
	st, err := v.KEKState(ctx)
	if err != nil {
		return err
	}
	if st.Target != "" {
		// A rotation begun in the soft keystore (`keys rotate-kek` before
		// the configuration named the token) has values sealed under a
		// target key that only the soft keystore holds. Finish it there
		// first: making a key of the same name on the token would leave
		// those values under a label whose key is not theirs.
		onToken, err := token.HasKey(ctx, st.Target)
		if err != nil {
			return err
		}
		inSoft, err := soft.HasKey(ctx, st.Target)
		if err != nil {
			return err
		}
		if !onToken && inSoft {
			fmt.Fprintf(k.out, "finishing the rotation to %s begun in %s first\n", st.Target, softPath)
			if _, err := k.rewrapAll(ctx, v, soft); err != nil {
				return err
			}
			if st, err = v.KEKState(ctx); err != nil {
				return err
			}
		}
	}
	if onToken, err := token.HasKey(ctx, st.Current); err != nil {
		return err
	} else if onToken && st.Target == "" {
		fmt.Fprintf(k.out, "the vault's key-encryption key %s is already on %s: nothing to migrate\n", st.Current, where)
		return printHostKey(ctx, k.out, token)
	}
	if _, err := k.rewrapAll(ctx, v, token); err != nil {
		return err
	}
	fmt.Fprintf(k.out, "migrated to %s. %s can still decrypt backups of the database taken before now: "+
		"destroy it (shred -u) once you no longer need them\n", where, softPath)
	return printHostKey(ctx, k.out, token)
}
