package embertest

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
)

const imageName = "docker.io/ember/gotest:latest"

var (
	archiveOnce sync.Once
	archive     []byte
	archiveErr  error
)

func tarFile(tw *tar.Writer, hdr *tar.Header, data []byte) error {
	hdr.Size = int64(len(data))
	hdr.ModTime = time.Unix(0, 0)
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// busyboxArchive is a docker archive (`docker save` layout) of one layer: the
// host's static busybox and the applets the flows use.
func busyboxArchive() ([]byte, error) {
	archiveOnce.Do(func() {
		bb, err := os.ReadFile("/bin/busybox")
		if err != nil {
			archiveErr = err
			return
		}
		var layer bytes.Buffer
		tw := tar.NewWriter(&layer)
		_ = tarFile(tw, &tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
		_ = tarFile(tw, &tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
		if err := tarFile(tw, &tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb); err != nil {
			archiveErr = err
			return
		}
		for _, a := range []string{"sh", "echo", "cat", "sleep", "true", "ls"} {
			_ = tarFile(tw, &tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
		}
		_ = tw.Close()
		diffID := digest.FromBytes(layer.Bytes())
		config, _ := json.Marshal(map[string]interface{}{
			"architecture": "amd64",
			"os":           "linux",
			"config":       map[string]interface{}{"Env": []string{"PATH=/bin"}, "Cmd": []string{"sh"}},
			"rootfs":       map[string]interface{}{"type": "layers", "diff_ids": []string{diffID.String()}},
		})
		manifest, _ := json.Marshal([]map[string]interface{}{{
			"Config":   digest.FromBytes(config).Encoded() + ".json",
			"RepoTags": []string{imageName},
			"Layers":   []string{diffID.Encoded() + "/layer.tar"},
		}})
		var out bytes.Buffer
		aw := tar.NewWriter(&out)
		for _, f := range []struct {
			name string
			data []byte
		}{
			{digest.FromBytes(config).Encoded() + ".json", config},
			{diffID.Encoded() + "/layer.tar", layer.Bytes()},
			{"manifest.json", manifest},
		} {
			if err := tarFile(aw, &tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644}, f.data); err != nil {
				archiveErr = err
				return
			}
		}
		_ = aw.Close()
		archive = out.Bytes()
	})
	return archive, archiveErr
}

// importImage imports and unpacks the test image into ns.
func importImage(t *testing.T, d *daemon, ns string) containerd.Image {
	t.Helper()
	ctx, cancel := ctxFor(ns)
	defer cancel()
	a, err := busyboxArchive()
	if err != nil {
		t.Fatalf("building the image: %v", err)
	}
	imgs, err := d.client.Import(ctx, bytes.NewReader(a))
	if err != nil || len(imgs) != 1 {
		t.Fatalf("import: %v (%d images)", err, len(imgs))
	}
	img := containerd.NewImage(d.client, imgs[0])
	if err := img.Unpack(ctx, "overlayfs"); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	return img
}

// observeImage records what a daemon knows about an unpacked image.
func observeImage(t *testing.T, d *daemon, ns string, img containerd.Image, o observations) {
	ctx, cancel := ctxFor(ns)
	defer cancel()
	o.set("name", "%s", img.Name())
	o.set("target", "%s %s %d", img.Target().MediaType, img.Target().Digest, img.Target().Size)
	unpacked, err := img.IsUnpacked(ctx, "overlayfs")
	o.set("unpacked", "%v %s", unpacked, errClass(err))
	diffIDs, err := img.RootFS(ctx)
	o.set("rootfs", "%v %s", diffIDs, errClass(err))
	if err == nil {
		chain := identity.ChainID(diffIDs).String()
		info, err := d.client.SnapshotService("overlayfs").Stat(ctx, chain)
		o.set("chain snapshot", "%v %s", info.Kind, errClass(err))
	}
	info, err := d.client.ContentStore().Info(ctx, img.Target().Digest)
	var keys []string
	for k := range info.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	o.set("manifest labels", "%s %s", strings.Join(keys, ","), errClass(err))
	size, err := img.Size(ctx)
	o.set("size", "%d %s", size, errClass(err))
	stored, err := d.client.ImageService().Get(ctx, img.Name())
	o.set("image record", "%s %s", stored.Target.Digest, errClass(err))
}

func TestImportAndUnpack(t *testing.T) {
	compare(t, func(t *testing.T, d *daemon, o observations) {
		ns := d.ns("import")
		img := importImage(t, d, ns)
		observeImage(t, d, ns, img, o)
	}, nil)
}

var pushOnce sync.Once

func TestPullFromRegistry(t *testing.T) {
	if registry == "" {
		t.Skip("needs docker-registry (apt-get install docker-registry)")
	}
	ref := registry + "/ember/gotest:1"
	resolver := func() containerd.RemoteOpt {
		return containerd.WithResolver(docker.NewResolver(docker.ResolverOptions{PlainHTTP: true}))
	}
	// The image goes into the registry once, from the first daemon.
	pushOnce.Do(func() {
		d := daemons[0]
		ns := d.ns("push")
		img := importImage(t, d, ns)
		ctx, cancel := ctxFor(ns)
		defer cancel()
		if err := d.client.Push(ctx, ref, img.Target(), resolver()); err != nil {
			t.Fatalf("push to %s: %v", ref, err)
		}
	})
	compare(t, func(t *testing.T, d *daemon, o observations) {
		ns := d.ns("pull")
		ctx, cancel := ctxFor(ns)
		defer cancel()
		img, err := d.client.Pull(ctx, ref, resolver(), containerd.WithPullUnpack)
		o.set("pull", "%s", errClass(err))
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		observeImage(t, d, ns, img, o)
	}, nil)
}
