package embertest

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd"
	_ "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/typeurl"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func blob(s string) ([]byte, ocispec.Descriptor) {
	data := []byte(s)
	return data, ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// collect runs a synchronous garbage collection: deleting a lease with
// SynchronousDelete waits for one.
func collect(ctx context.Context, t *testing.T, ls leases.Manager) {
	l, err := ls.Create(ctx, leases.WithRandomID())
	if err != nil {
		t.Fatalf("lease for collection: %v", err)
	}
	if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil {
		t.Fatalf("collecting: %v", err)
	}
}

func TestLeasesAndGarbageCollectionLabels(t *testing.T) {
	compare(t, func(t *testing.T, d *daemon, o observations) {
		ns := d.ns("gc")
		ctx, cancel := ctxFor(ns)
		defer cancel()
		cs := d.client.ContentStore()
		ls := d.client.LeasesService()
		lease, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour), leases.WithLabels(map[string]string{"purpose": "test"}))
		if err != nil {
			t.Fatalf("lease: %v", err)
		}
		lctx := leases.WithLease(ctx, lease.ID)
		leased, leasedDesc := blob("leased " + d.name)
		child, childDesc := blob("child")
		root, rootDesc := blob("root")
		loose, looseDesc := blob("loose")
		write := func(ctx context.Context, data []byte, desc ocispec.Descriptor, labels map[string]string) string {
			return errClass(content.WriteBlob(ctx, cs, "ref-"+desc.Digest.Encoded()[:12], bytes.NewReader(data), desc, content.WithLabels(labels)))
		}
		o.set("write leased", "%s", write(lctx, leased, leasedDesc, nil))
		o.set("write child", "%s", write(ctx, child, childDesc, nil))
		o.set("write root", "%s", write(ctx, root, rootDesc, map[string]string{
			"containerd.io/gc.root":          time.Now().UTC().Format(time.RFC3339),
			"containerd.io/gc.ref.content.0": childDesc.Digest.String(),
		}))
		o.set("write loose", "%s", write(ctx, loose, looseDesc, nil))
		rs, err := ls.ListResources(ctx, lease)
		var kinds []string
		for _, r := range rs {
			kinds = append(kinds, r.Type+"="+fmt.Sprint(r.ID == leasedDesc.Digest.String()))
		}
		o.set("lease resources", "%v %s", kinds, errClass(err))
		ll, err := ls.List(ctx, `labels.purpose==test`)
		o.set("leases by label", "%d %s", len(ll), errClass(err))

		collect(ctx, t, ls)
		for name, desc := range map[string]ocispec.Descriptor{"leased": leasedDesc, "child": childDesc, "root": rootDesc, "loose": looseDesc} {
			_, err := cs.Info(ctx, desc.Digest)
			o.set("after gc: "+name, "%s", errClass(err))
		}
		// The lease gone, what it held goes at the next collection.
		o.set("delete lease", "%s", errClass(ls.Delete(ctx, lease, leases.SynchronousDelete)))
		_, err = cs.Info(ctx, leasedDesc.Digest)
		o.set("leased after its lease went", "%s", errClass(err))
		// Without its root label, the root and its child go too.
		_, err = cs.Update(ctx, content.Info{Digest: rootDesc.Digest}, "labels.containerd.io/gc.root")
		o.set("unroot", "%s", errClass(err))
		collect(ctx, t, ls)
		for name, desc := range map[string]ocispec.Descriptor{"child": childDesc, "root": rootDesc} {
			_, err := cs.Info(ctx, desc.Digest)
			o.set("after unrooting: "+name, "%s", errClass(err))
		}
	}, nil)
}

func TestResumableContentWrites(t *testing.T) {
	compare(t, func(t *testing.T, d *daemon, o observations) {
		ns := d.ns("resume")
		ctx, cancel := ctxFor(ns)
		defer cancel()
		cs := d.client.ContentStore()
		data, desc := blob(strings.Repeat("resumable content ", 4096))
		half := len(data) / 2
		ref := "resume-" + d.name
		w, err := content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
		if err != nil {
			t.Fatalf("open writer: %v", err)
		}
		_, err = w.Write(data[:half])
		o.set("first half", "%s", errClass(err))
		// Interrupted: the writer goes away without committing.
		o.set("close", "%s", errClass(w.Close()))
		st, err := cs.Status(ctx, ref)
		o.set("status after interruption", "%d %d %s", st.Offset, st.Total, errClass(err))
		sts, err := cs.ListStatuses(ctx)
		o.set("ingests", "%d %s", len(sts), errClass(err))

		w, err = content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
		if err != nil {
			t.Fatalf("reopen writer: %v", err)
		}
		ws, err := w.Status()
		o.set("resumed at", "%d %s", ws.Offset, errClass(err))
		_, err = w.Write(data[ws.Offset:])
		o.set("rest", "%s", errClass(err))
		o.set("commit", "%s", errClass(w.Commit(ctx, desc.Size, desc.Digest)))
		_ = w.Close()
		got, err := content.ReadBlob(ctx, cs, desc)
		o.set("read back", "%v %s", bytes.Equal(got, data), errClass(err))
		_, err = cs.Status(ctx, ref)
		o.set("status after commit", "%s", errClass(err))

		// A commit with the wrong digest fails and keeps nothing.
		bad, badDesc := blob("corrupt me")
		w, err = content.OpenWriter(ctx, cs, content.WithRef(ref+"-bad"), content.WithDescriptor(badDesc))
		if err != nil {
			t.Fatalf("open writer: %v", err)
		}
		_, _ = w.Write(bad[:4])
		_, _ = w.Write([]byte("XXXXXX"))
		o.set("bad commit", "%s", errClass(w.Commit(ctx, badDesc.Size, badDesc.Digest)))
		_ = w.Close()
		_, err = cs.Info(ctx, badDesc.Digest)
		o.set("bad blob", "%s", errClass(err))
		o.set("abort", "%s", errClass(cs.Abort(ctx, ref+"-bad")))
	}, nil)
}

func TestEventsWithFilters(t *testing.T) {
	compare(t, func(t *testing.T, d *daemon, o observations) {
		ns := d.ns("events")
		other := d.ns("events-other")
		img := importImage(t, d, ns)
		ctx, cancel := ctxFor(ns)
		defer cancel()
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		filter := fmt.Sprintf(`topic~="/images/",namespace==%s`, ns)
		ch, errs := d.client.EventService().Subscribe(sctx, filter, `topic=="/containers/delete"`)
		// The subscription is in place once an event it takes arrives: retry a
		// marker until one does.
		is := d.client.ImageService()
		marker := images.Image{Name: "marker", Target: img.Target()}
		var got []string
		deadline := time.After(20 * time.Second)
	settle:
		for {
			_, _ = is.Create(ctx, marker)
			select {
			case e := <-ch:
				if e.Topic == "/images/create" {
					break settle
				}
			case err := <-errs:
				t.Fatalf("subscribe: %v", err)
			case <-time.After(200 * time.Millisecond):
				_ = is.Delete(ctx, "marker")
			case <-deadline:
				t.Fatalf("no event arrived")
			}
		}
		_ = is.Delete(ctx, "marker", images.SynchronousDelete())
		octx, ocancel := ctxFor(other)
		defer ocancel()
		// Seen: images in ns; not seen: images elsewhere, other topics in ns.
		_, _ = d.client.ImageService().Create(octx, images.Image{Name: "elsewhere", Target: img.Target()})
		_, _ = is.Create(ctx, images.Image{Name: "seen", Target: img.Target(), Labels: map[string]string{"a": "b"}})
		_, _ = is.Update(ctx, images.Image{Name: "seen", Target: img.Target(), Labels: map[string]string{"a": "c"}}, "labels.a")
		_ = is.Delete(ctx, "seen")
		_ = d.client.ContentStore().Delete(ctx, digest.FromString("not there"))
		_ = d.client.ImageService().Delete(octx, "elsewhere")
		// Container deletions are taken in any namespace, creations not.
		if c, err := d.client.NewContainer(octx, "evc", containerd.WithNewSpec(oci.WithProcessArgs("true"))); err == nil {
			_ = c.Delete(octx)
		} else {
			t.Errorf("container: %v", err)
		}
		until := time.After(3 * time.Second)
	gather:
		for {
			select {
			case e := <-ch:
				v, err := typeurl.UnmarshalAny(e.Event)
				name := ""
				if rv := reflect.ValueOf(v); err == nil && rv.Kind() == reflect.Ptr {
					for _, f := range []string{"Name", "ID"} {
						if fv := rv.Elem().FieldByName(f); fv.IsValid() {
							name = fv.String()
						}
					}
				}
				got = append(got, fmt.Sprintf("%s %v %s %s", e.Topic, e.Namespace == ns, name, errClass(err)))
			case <-until:
				break gather
			}
		}
		o.set("events", "%v", got)
	}, nil)
}
