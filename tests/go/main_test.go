// Package embertest drives Debian's containerd 1.6 and emberd with containerd's
// own Go client: every flow runs against containerd, emberd, and emberd whose
// content store and differ are behind proxy sockets; what they make of it must
// agree.
package embertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
)

// A daemon under test.
type daemon struct {
	name    string
	address string
	client  *containerd.Client
	cmd     *exec.Cmd
	log     string
}

var (
	daemons []*daemon
	// Proxy servers the daemons use.
	helpers []*exec.Cmd
	workDir string
	// The workspace's target directory (emberd, the Ember shim).
	binDir string
	// Where the registry listens, when one runs.
	registry string
	// Why the microVM flows cannot run, if they cannot.
	noGuest string
)

func ctxFor(ns string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	return namespaces.WithNamespace(ctx, ns), cancel
}

// The namespace a flow uses on a daemon: distinct per daemon, since both share
// the host's runc state directories.
func (d *daemon) ns(flow string) string {
	return fmt.Sprintf("go-%s-%s-%d", flow, d.name, os.Getpid())
}

// errClass names an error as containerd's error kinds do ("ok" for none).
func errClass(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errdefs.IsNotFound(err):
		return "not found"
	case errdefs.IsAlreadyExists(err):
		return "already exists"
	case errdefs.IsInvalidArgument(err):
		return "invalid argument"
	case errdefs.IsFailedPrecondition(err):
		return "failed precondition"
	case errdefs.IsUnavailable(err):
		return "unavailable"
	case errdefs.IsNotImplemented(err):
		return "not implemented"
	}
	// Messages differ between daemons; the kind is what clients act on.
	return "other"
}

// observations are what a flow saw, as strings, compared between the daemons.
type observations map[string]string

func (o observations) set(key string, format string, args ...interface{}) {
	o[key] = fmt.Sprintf(format, args...)
}

// compare runs flow on each daemon and fails when they saw different things.
// Keys in skip are left out of the comparison (each with the reason why).
func compare(t *testing.T, flow func(t *testing.T, d *daemon, o observations), skip map[string]string) {
	t.Helper()
	results := make([]observations, len(daemons))
	for i, d := range daemons {
		i, d := i, d
		results[i] = observations{}
		t.Run(d.name, func(t *testing.T) { flow(t, d, results[i]) })
	}
	for k, why := range skip {
		for _, r := range results {
			delete(r, k)
		}
		t.Logf("not compared: %s (%s)", k, why)
	}
	for i, r := range results {
		t.Logf("%s saw: %v", daemons[i].name, r)
	}
	if len(results) < 2 {
		return
	}
	for i := 1; i < len(results); i++ {
		if !reflect.DeepEqual(results[0], results[i]) {
			t.Errorf("%s and %s differ:\n%s", daemons[0].name, daemons[i].name, diff(results[0], results[i]))
		}
	}
}

func diff(a, b observations) string {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var out strings.Builder
	for _, k := range sorted {
		va, oka := a[k]
		vb, okb := b[k]
		if va != vb || oka != okb {
			fmt.Fprintf(&out, "  %s:\n    %q\n    %q\n", k, va, vb)
		}
	}
	return out.String()
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitSocket(path string, cmd *exec.Cmd, log string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(log)
	return fmt.Errorf("%s did not come up on %s:\n%s", cmd.Path, path, b)
}

func start(name, bin string, args []string, socket string) (*daemon, error) {
	log := filepath.Join(workDir, name+".log")
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// The Ember shim is found on PATH, before Debian's runc shim.
	cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait() }()
	if err := waitSocket(socket, cmd, log); err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	if strings.HasSuffix(name, "-proxy") {
		return &daemon{name: name, address: socket, cmd: cmd, log: log}, nil
	}
	client, err := containerd.New(socket, containerd.WithTimeout(10*time.Second))
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	return &daemon{name: name, address: socket, client: client, cmd: cmd, log: log}, nil
}

func startContainerd() (*daemon, error) {
	d := filepath.Join(workDir, "containerd")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`version = 2
root = "%[1]s/root"
state = "%[1]s/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "%[1]s/c.sock"
[ttrpc]
  address = "%[1]s/c.ttrpc.sock"
[debug]
  address = "%[1]s/debug.sock"
`, d)
	if err := os.WriteFile(filepath.Join(d, "config.toml"), []byte(config), 0o600); err != nil {
		return nil, err
	}
	return start("containerd", "/usr/bin/containerd", []string{"--config", filepath.Join(d, "config.toml")}, filepath.Join(d, "c.sock"))
}

func emberdArgs(d string) []string {
	return []string{
		"--root", filepath.Join(d, "root"),
		"--state", filepath.Join(d, "state"),
		"--address", filepath.Join(d, "emberd.sock"),
		"--log-level", "debug",
	}
}

func startEmberd() (*daemon, error) {
	d := filepath.Join(workDir, "emberd")
	return start("emberd", filepath.Join(binDir, "emberd"), emberdArgs(d), filepath.Join(d, "emberd.sock"))
}

// startProxiedEmberd runs emberd whose content store and differ are Ember's
// own, served by ember-content-proxy and ember-diff-proxy on unix sockets.
func startProxiedEmberd() (*daemon, error) {
	d := filepath.Join(workDir, "proxied")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, err
	}
	blobs, layers := filepath.Join(d, "blobs.sock"), filepath.Join(d, "layers.sock")
	content, err := start("content-proxy", filepath.Join(binDir, "ember-content-proxy"),
		[]string{"--root", filepath.Join(d, "blobs"), "--address", blobs}, blobs)
	if err != nil {
		return nil, err
	}
	helpers = append(helpers, content.cmd)
	config := fmt.Sprintf(`version = 2
[proxy_plugins.blobs]
  type = "content"
  address = "%s"
[proxy_plugins.layers]
  type = "diff"
  address = "%s"
[plugins."io.containerd.service.v1.diff-service"]
  default = ["layers"]
`, blobs, layers)
	if err := os.WriteFile(filepath.Join(d, "emberd.toml"), []byte(config), 0o600); err != nil {
		return nil, err
	}
	e, err := start("emberd-proxied", filepath.Join(binDir, "emberd"),
		append(emberdArgs(d), "--config", filepath.Join(d, "emberd.toml")), filepath.Join(d, "emberd.sock"))
	if err != nil {
		return nil, err
	}
	diff, err := start("diff-proxy", filepath.Join(binDir, "ember-diff-proxy"),
		[]string{"--address", layers, "--content", e.address, "--state", filepath.Join(d, "diff")}, layers)
	if err != nil {
		e.client.Close()
		_ = e.cmd.Process.Kill()
		return nil, err
	}
	helpers = append(helpers, diff.cmd)
	return e, nil
}

// startRegistry runs Debian's docker-registry on a loopback port.
func startRegistry() (string, *exec.Cmd, error) {
	addr := freePort()
	d := filepath.Join(workDir, "registry")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", nil, err
	}
	config := fmt.Sprintf("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: %s\nlog:\n  level: warn\n", d, addr)
	if err := os.WriteFile(filepath.Join(d, "config.yml"), []byte(config), 0o600); err != nil {
		return "", nil, err
	}
	cmd := exec.Command("/usr/bin/docker-registry", "serve", filepath.Join(d, "config.yml"))
	f, _ := os.Create(filepath.Join(workDir, "registry.log"))
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	go func() { _ = cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, cmd, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return "", nil, fmt.Errorf("docker-registry did not listen on %s", addr)
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("skipping: the Go client tests need root")
		return 0
	}
	binDir = os.Getenv("EMBER_BIN_DIR")
	if binDir == "" {
		abs, _ := filepath.Abs("../../target/debug")
		binDir = abs
	}
	for _, need := range []string{filepath.Join(binDir, "emberd"), filepath.Join(binDir, "ember-content-proxy"), filepath.Join(binDir, "ember-diff-proxy"), "/usr/bin/containerd", "/usr/bin/runc", "/bin/busybox"} {
		if _, err := os.Stat(need); err != nil {
			fmt.Printf("skipping: %s missing\n", need)
			return 0
		}
	}
	guest := os.Getenv("EMBER_GUEST_DIR")
	if guest == "" {
		guest = "/var/lib/ember/guest"
	}
	if _, err := os.Stat(filepath.Join(guest, "vmlinux")); err != nil {
		noGuest = "no guest kernel in " + guest
	} else if _, err := os.Stat(filepath.Join(binDir, "containerd-shim-ember-v2")); err != nil {
		noGuest = "containerd-shim-ember-v2 not built"
	}
	dir, err := os.MkdirTemp("", "ember-go-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	workDir = dir
	keep := false
	defer func() {
		for _, d := range daemons {
			d.client.Close()
			_ = d.cmd.Process.Kill()
		}
		for _, h := range helpers {
			_ = h.Process.Kill()
		}
		if !keep {
			_ = os.RemoveAll(dir)
		}
	}()
	for _, s := range []func() (*daemon, error){startContainerd, startEmberd, startProxiedEmberd} {
		d, err := s()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		daemons = append(daemons, d)
	}
	if _, err := os.Stat("/usr/bin/docker-registry"); err == nil {
		addr, cmd, err := startRegistry()
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer func() { _ = cmd.Process.Kill() }()
		registry = addr
	}
	code := m.Run()
	if code != 0 {
		keep = true
		fmt.Printf("daemon logs kept in %s\n", dir)
	}
	return code
}
