package mlserve

// The Go client against a real MLServe and Triton, started by
// tests/client/test_polyglot_clients.py, which passes MLSERVE_ADDRESS,
// MLSERVE_KEY, MLSERVE_TOKEN (from a test issuer), MLSERVE_MODEL and
// MLSERVE_EXAMPLE (a copy of examples/add with a 5 MiB file added).

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/mlserve/mlserve/generated/go/mlserve/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func environment(t *testing.T, name string) string {
	value := os.Getenv(name)
	if value == "" {
		t.Skipf("%s is not set: tests/client/test_polyglot_clients.py runs this against a real MLServe", name)
	}
	return value
}

func TestKeyUploadResumeDownloadDeployInfer(t *testing.T) {
	address, key := environment(t, "MLSERVE_ADDRESS"), environment(t, "MLSERVE_KEY")
	model, example := environment(t, "MLSERVE_MODEL"), environment(t, "MLSERVE_EXAMPLE")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client, err := Dial(address, key)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.ListModels(ctx); err != nil {
		t.Fatal(err)
	}

	// Interrupt an upload after the first chunk of its big file…
	prepared, err := client.PrepareUpload(model, example)
	if err != nil {
		t.Fatal(err)
	}
	var big File
	for _, file := range prepared.Files {
		if file.Manifest.Size > ChunkBytes {
			big = file
		}
	}
	partial, stop := context.WithCancel(ctx)
	stream, err := client.Models.UploadModelVersion(partial)
	if err != nil {
		t.Fatal(err)
	}
	content, _ := os.ReadFile(big.Absolute)
	first := &v1.FileChunk{Path: big.Manifest.Path, Offset: 0, Data: content[:ChunkBytes]}
	if err := stream.Send(prepared.Header()); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&v1.UploadModelVersionRequest{Part: &v1.UploadModelVersionRequest_Chunk{Chunk: first}}); err != nil {
		t.Fatal(err)
	}
	for {
		held, err := client.ReceivedBytes(ctx, prepared.UploadID)
		if err != nil {
			t.Fatal(err)
		}
		if held[big.Manifest.Path] == ChunkBytes {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()

	// …and resume it.
	version, err := client.Upload(ctx, model, example)
	if err != nil {
		t.Fatal(err)
	}
	if version.UploadId != prepared.UploadID || len(version.Files) != len(prepared.Files) {
		t.Fatalf("resumed upload made %v", version)
	}

	destination := t.TempDir()
	if _, err := client.Download(ctx, model, version.Version, destination); err != nil {
		t.Fatal(err)
	}
	downloaded, _ := os.ReadFile(filepath.Join(destination, big.Manifest.Path))
	if !bytes.Equal(downloaded, content) {
		t.Fatal("the downloaded file differs from the uploaded one")
	}

	if _, err := client.Deploy(ctx, model, version.Version, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	defer client.Deployments.DeleteDeployment(ctx, &v1.DeleteDeploymentRequest{Name: model})
	outputs, err := client.InferFP32(ctx, model, map[string][]float32{
		"INPUT0": {1, 2, 3, 4}, "INPUT1": {10, 20, 30, 40},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{11, 22, 33, 44}
	for i, value := range outputs["OUTPUT0"] {
		if value != want[i] {
			t.Fatalf("OUTPUT0 = %v, want %v", outputs["OUTPUT0"], want)
		}
	}
}

func TestTokenSignsInAndAWrongKeyIsUnauthenticated(t *testing.T) {
	address, token := environment(t, "MLSERVE_ADDRESS"), environment(t, "MLSERVE_TOKEN")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	signedIn, err := Dial(address, token)
	if err != nil {
		t.Fatal(err)
	}
	defer signedIn.Close()
	if _, err := signedIn.ListModels(ctx); err != nil {
		t.Fatal(err)
	}
	instance, err := signedIn.Instance.GetInstance(ctx, &v1.GetInstanceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(instance.Authentication.OidcIssuers) != 1 {
		t.Fatalf("GetInstance says issuers %v", instance.Authentication.OidcIssuers)
	}
	wrong, _ := Dial(address, "mls_000000000000_wrong")
	defer wrong.Close()
	if _, err := wrong.ListModels(ctx); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a wrong key: %v, want UNAUTHENTICATED", err)
	}
}
