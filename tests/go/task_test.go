package embertest

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/oci"
)

const (
	runc  = "io.containerd.runc.v2"
	ember = "io.containerd.ember.v2"
)

// buffer is an io.Writer safe for the copying goroutines of cio.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// newContainer makes a container of the test image with its own snapshot.
func newContainer(t *testing.T, d *daemon, ns, id, runtime string, img containerd.Image, args ...string) containerd.Container {
	t.Helper()
	ctx, cancel := ctxFor(ns)
	defer cancel()
	c, err := d.client.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithNewSnapshot(id+"-snapshot", img),
		containerd.WithRuntime(runtime, nil),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs(args...)),
	)
	if err != nil {
		t.Fatalf("new container: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := ctxFor(ns)
		defer cancel()
		if task, err := c.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, containerd.WithProcessKill)
		}
		_ = c.Delete(ctx, containerd.WithSnapshotCleanup)
	})
	return c
}

// runToExit creates and starts a task, waits for it and deletes it; records the
// exit code and output.
func runToExit(t *testing.T, d *daemon, ns string, c containerd.Container, o observations, key string) {
	ctx, cancel := ctxFor(ns)
	defer cancel()
	var stdout, stderr buffer
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &stdout, &stderr)))
	o.set(key+" create", "%s", errClass(err))
	if err != nil {
		t.Fatalf("create task: %v", err)
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	status, err := task.Status(ctx)
	o.set(key+" status before start", "%s %s", status.Status, errClass(err))
	o.set(key+" start", "%s", errClass(task.Start(ctx)))
	select {
	case st := <-exited:
		code, _, err := st.Result()
		o.set(key+" exit", "%d %s", code, errClass(err))
	case <-time.After(2 * time.Minute):
		t.Fatalf("the task did not exit")
	}
	status, err = task.Status(ctx)
	o.set(key+" status after exit", "%s %s", status.Status, errClass(err))
	st, err := task.Delete(ctx)
	o.set(key+" delete", "%d %s", st.ExitCode(), errClass(err))
	o.set(key+" stdout", "%q", stdout.String())
	o.set(key+" stderr", "%q", stderr.String())
	_, err = c.Task(ctx, nil)
	o.set(key+" task after delete", "%s", errClass(err))
}

func taskFlow(runtime string) func(t *testing.T, d *daemon, o observations) {
	return func(t *testing.T, d *daemon, o observations) {
		ns := d.ns("task-" + strings.ReplaceAll(runtime, ".", "-"))
		img := importImage(t, d, ns)
		id := fmt.Sprintf("run-%s-%d", d.name, time.Now().UnixNano()%100000)
		c := newContainer(t, d, ns, id, runtime, img, "sh", "-c", "echo out; echo err >&2; sleep 0.2; exit 3")
		ctx, cancel := ctxFor(ns)
		defer cancel()
		info, err := c.Info(ctx)
		o.set("container", "%s %s %s %s", info.Runtime.Name, info.Snapshotter, info.Image, errClass(err))
		runToExit(t, d, ns, c, o, "first")
		if runtime == runc {
			// The same container runs again once its task is gone.
			runToExit(t, d, ns, c, o, "second")
		}
	}
}

// eofSignal closes done when its reader is exhausted.
type eofSignal struct {
	r    *strings.Reader
	done chan struct{}
	once sync.Once
}

func (e *eofSignal) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil {
		e.once.Do(func() { close(e.done) })
	}
	return n, err
}

func TestTaskRuncRunWaitDelete(t *testing.T) {
	compare(t, taskFlow(runc), nil)
}

func TestTaskEmberRunWaitDelete(t *testing.T) {
	if noGuest != "" {
		t.Skip("needs the Ember guest: " + noGuest)
	}
	compare(t, taskFlow(ember), nil)
}

func TestTaskRuncKillAndExec(t *testing.T) {
	compare(t, func(t *testing.T, d *daemon, o observations) {
		ns := d.ns("kill")
		img := importImage(t, d, ns)
		id := fmt.Sprintf("kill-%s-%d", d.name, time.Now().UnixNano()%100000)
		c := newContainer(t, d, ns, id, runc, img, "sleep", "60")
		ctx, cancel := ctxFor(ns)
		defer cancel()
		task, err := c.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatalf("create task: %v", err)
		}
		exited, _ := task.Wait(ctx)
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start: %v", err)
		}
		pids, err := task.Pids(ctx)
		o.set("pids", "%d %s", len(pids), errClass(err))

		// exec with stdio, while the task runs
		spec, err := c.Spec(ctx)
		if err != nil {
			t.Fatalf("spec: %v", err)
		}
		pspec := *spec.Process
		pspec.Args = []string{"sh", "-c", "cat; echo exec-out; echo exec-err >&2; exit 5"}
		var stdout, stderr buffer
		stdin := &eofSignal{r: strings.NewReader("from stdin\n"), done: make(chan struct{})}
		p, err := task.Exec(ctx, "exec1", &pspec, cio.NewCreator(cio.WithStreams(stdin, &stdout, &stderr)))
		o.set("exec", "%s", errClass(err))
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		_, err = task.Exec(ctx, "exec1", &pspec, cio.NullIO)
		o.set("exec same id", "%s", errClass(err))
		pexited, err := p.Wait(ctx)
		if err != nil {
			t.Fatalf("exec wait: %v", err)
		}
		o.set("exec start", "%s", errClass(p.Start(ctx)))
		// Once stdin is written, it is closed, and cat ends.
		select {
		case <-stdin.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("stdin was not read")
		}
		o.set("close stdin", "%s", errClass(p.CloseIO(ctx, containerd.WithStdinCloser)))
		select {
		case st := <-pexited:
			o.set("exec exit", "%d", st.ExitCode())
		case <-time.After(time.Minute):
			t.Fatalf("the exec did not exit")
		}
		st, err := p.Delete(ctx)
		o.set("exec delete", "%d %s", st.ExitCode(), errClass(err))
		o.set("exec stdout", "%q", stdout.String())
		o.set("exec stderr", "%q", stderr.String())

		// kill, wait, delete
		o.set("kill", "%s", errClass(task.Kill(ctx, syscall.SIGKILL)))
		select {
		case st := <-exited:
			o.set("exit after kill", "%d", st.ExitCode())
		case <-time.After(time.Minute):
			t.Fatalf("the task did not die")
		}
		status, _ := task.Status(ctx)
		o.set("status", "%s", status.Status)
		_, err = task.Delete(ctx)
		o.set("delete", "%s", errClass(err))
		o.set("kill after delete", "%s", errClass(task.Kill(ctx, syscall.SIGKILL)))
	}, nil)
}
