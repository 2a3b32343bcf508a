// Package mlserve is a small Go client for MLServe on the generated stubs in
// generated/go: connect with an API key or an OIDC token, list models, upload a
// model folder (resumable, with a sha256 manifest), download a version (checked
// against its manifest), deploy, and infer through MLServe's gateway (Triton's
// protocol, generated/go/triton).
package mlserve

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	v1 "github.com/mlserve/mlserve/generated/go/mlserve/v1"
	inference "github.com/mlserve/mlserve/generated/go/triton"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ChunkBytes is the size of upload chunks; MLServe takes at most 4 MiB per chunk.
const ChunkBytes = 2 * 1024 * 1024

// Client is a connection to MLServe; the stubs are exported for every other RPC.
type Client struct {
	conn        *grpc.ClientConn
	scope       string
	Models      v1.ModelServiceClient
	Deployments v1.DeploymentServiceClient
	Instance    v1.InstanceServiceClient
	Gateway     inference.GRPCInferenceServiceClient
}

// bearer sends "authorization: Bearer <key or token>" with every call; MLServe
// accepts it on a plaintext channel (loopback, or behind a TLS terminator).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// Dial connects to address (host:port) over plaintext with credential: an API
// key (mls_…) or an OIDC token from an issuer MLServe trusts. Pass more
// options (e.g. grpc.WithTransportCredentials for TLS) after it.
func Dial(address, credential string, options ...grpc.DialOption) (*Client, error) {
	if credential == "" {
		return nil, errors.New("give an API key or an OIDC token")
	}
	options = append([]grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithPerRPCCredentials(bearer(credential)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 * 1024 * 1024)),
	}, options...)
	conn, err := grpc.Dial(address, options...)
	if err != nil {
		return nil, err
	}
	scope := sha256.Sum256([]byte(credential))
	return &Client{
		conn:        conn,
		scope:       hex.EncodeToString(scope[:8]),
		Models:      v1.NewModelServiceClient(conn),
		Deployments: v1.NewDeploymentServiceClient(conn),
		Instance:    v1.NewInstanceServiceClient(conn),
		Gateway:     inference.NewGRPCInferenceServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// ListModels returns every model the caller may see, through all pages.
func (c *Client) ListModels(ctx context.Context) ([]*v1.Model, error) {
	var models []*v1.Model
	token := ""
	for {
		page, err := c.Models.ListModels(ctx, &v1.ListModelsRequest{PageSize: 100, PageToken: token})
		if err != nil {
			return nil, err
		}
		models = append(models, page.Models...)
		if token = page.NextPageToken; token == "" {
			return models, nil
		}
	}
}

// File is one file of a model folder with its manifest entry.
type File struct {
	Absolute string
	Manifest *v1.FileManifest
}

// PreparedUpload is what Upload sends: the files, the config and the upload id
// derived from the content, so sending the same folder again resumes.
type PreparedUpload struct {
	Model    string
	UploadID string
	Config   string
	Files    []File
}

// Header is the upload's first message.
func (p *PreparedUpload) Header() *v1.UploadModelVersionRequest {
	manifest := make([]*v1.FileManifest, len(p.Files))
	for i, file := range p.Files {
		manifest[i] = file.Manifest
	}
	return &v1.UploadModelVersionRequest{Part: &v1.UploadModelVersionRequest_Header{
		Header: &v1.UploadHeader{Model: p.Model, UploadId: p.UploadID, Files: manifest, Config: p.Config},
	}}
}

var numbered = regexp.MustCompile(`^[0-9]+$`)

// PrepareUpload reads folder: config.pbtxt (optional) and the version's files,
// or one numbered folder of them (Triton's layout).
func (c *Client) PrepareUpload(model, folder string) (*PreparedUpload, error) {
	config, err := os.ReadFile(filepath.Join(folder, "config.pbtxt"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	entries, err := os.ReadDir(folder)
	if err != nil {
		return nil, err
	}
	root := folder
	var rest []os.DirEntry
	for _, entry := range entries {
		if entry.Name() != "config.pbtxt" {
			rest = append(rest, entry)
		}
	}
	if len(rest) == 1 && rest[0].IsDir() && numbered.MatchString(rest[0].Name()) {
		root = filepath.Join(folder, rest[0].Name())
	}
	prepared := &PreparedUpload{Model: model, Config: string(config)}
	identity := sha256.New()
	fmt.Fprintf(identity, "%s\n%s\n", model, config)
	err = filepath.WalkDir(root, func(path string, entry os.DirEntry, err error) error {
		if err != nil || entry.IsDir() || (root == folder && path == filepath.Join(folder, "config.pbtxt")) {
			return err
		}
		relative, _ := filepath.Rel(root, path)
		digest, size, err := fileDigest(path)
		if err != nil {
			return err
		}
		manifest := &v1.FileManifest{Path: filepath.ToSlash(relative), Size: size, Sha256: digest}
		prepared.Files = append(prepared.Files, File{Absolute: path, Manifest: manifest})
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(prepared.Files, func(i, j int) bool {
		return prepared.Files[i].Manifest.Path < prepared.Files[j].Manifest.Path
	})
	for _, file := range prepared.Files {
		fmt.Fprintf(identity, "%s\n%d\n%s\n", file.Manifest.Path, file.Manifest.Size, file.Manifest.Sha256)
	}
	identity.Write([]byte(c.scope))
	prepared.UploadID = "g-" + hex.EncodeToString(identity.Sum(nil))[:40]
	return prepared, nil
}

func fileDigest(path string) (string, int64, error) {
	handle, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer handle.Close()
	digest := sha256.New()
	size, err := io.Copy(digest, handle)
	return hex.EncodeToString(digest.Sum(nil)), size, err
}

// ReceivedBytes says, per path, how many bytes MLServe holds of upload uploadID
// (none when it has no such upload).
func (c *Client) ReceivedBytes(ctx context.Context, uploadID string) (map[string]int64, error) {
	upload, err := c.Models.GetUpload(ctx, &v1.GetUploadRequest{UploadId: uploadID})
	if status.Code(err) == codes.NotFound {
		return map[string]int64{}, nil
	}
	if err != nil {
		return nil, err
	}
	held := map[string]int64{}
	for _, file := range upload.Files {
		held[file.Path] = file.ReceivedBytes
	}
	return held, nil
}

// abortedRetry bounds how long Upload keeps trying while another stream holds
// the upload.
const abortedRetry = 15 * time.Second

// Upload uploads folder as a new version of model (created when missing),
// resuming an interrupted upload of the same content from where MLServe got to.
// Aborted means another stream holds the upload (often one just interrupted,
// which the server is still closing): Upload tries again, resuming from what
// that stream stored, for up to 15 s.
func (c *Client) Upload(ctx context.Context, model, folder string) (*v1.ModelVersion, error) {
	deadline := time.Now().Add(abortedRetry)
	pause := 100 * time.Millisecond
	for {
		version, err := c.uploadOnce(ctx, model, folder)
		if status.Code(err) != codes.Aborted || time.Now().Add(pause).After(deadline) {
			return version, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pause):
		}
		if pause < 2*time.Second {
			pause *= 2
		}
	}
}

func (c *Client) uploadOnce(ctx context.Context, model, folder string) (*v1.ModelVersion, error) {
	prepared, err := c.PrepareUpload(model, folder)
	if err != nil {
		return nil, err
	}
	held, err := c.ReceivedBytes(ctx, prepared.UploadID)
	if err != nil {
		return nil, err
	}
	stream, err := c.Models.UploadModelVersion(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(prepared.Header()); err != nil {
		return nil, err
	}
	for _, file := range prepared.Files {
		if err := sendFile(stream, file, held[file.Manifest.Path]); err != nil {
			return nil, err
		}
	}
	return stream.CloseAndRecv()
}

func sendFile(stream v1.ModelService_UploadModelVersionClient, file File, offset int64) error {
	if offset >= file.Manifest.Size && file.Manifest.Size > 0 {
		return nil
	}
	handle, err := os.Open(file.Absolute)
	if err != nil {
		return err
	}
	defer handle.Close()
	buffer := make([]byte, ChunkBytes)
	for {
		n, err := handle.ReadAt(buffer, offset)
		if n > 0 || offset == 0 {
			chunk := &v1.FileChunk{Path: file.Manifest.Path, Offset: offset, Data: buffer[:n]}
			if err := stream.Send(&v1.UploadModelVersionRequest{Part: &v1.UploadModelVersionRequest_Chunk{Chunk: chunk}}); err != nil {
				return err
			}
			offset += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Download writes version's files under destination, each checked against the
// version's sha256 manifest before it takes its name (a .part file until then).
func (c *Client) Download(ctx context.Context, model string, version int64, destination string) (*v1.ModelVersion, error) {
	described, err := c.Models.GetModelVersion(ctx, &v1.GetModelVersionRequest{Model: model, Version: version})
	if err != nil {
		return nil, err
	}
	root, _ := filepath.Abs(destination)
	for _, file := range described.Files {
		target := filepath.Join(root, filepath.FromSlash(file.Path))
		if !strings.HasPrefix(target, root+string(filepath.Separator)) {
			return nil, fmt.Errorf("refusing %s: it leaves the download folder", file.Path)
		}
		if err := c.downloadFile(ctx, described, file, target); err != nil {
			return nil, err
		}
	}
	return described, nil
}

func (c *Client) downloadFile(ctx context.Context, version *v1.ModelVersion, file *v1.FileManifest, target string) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	partial := target + ".part"
	handle, err := os.Create(partial)
	if err != nil {
		return err
	}
	defer handle.Close()
	stream, err := c.Models.DownloadModelVersion(ctx, &v1.DownloadModelVersionRequest{
		Model: version.Model, Version: version.Version, Path: file.Path,
	})
	if err != nil {
		return err
	}
	digest := sha256.New()
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if _, err := handle.WriteAt(chunk.Data, chunk.Offset); err != nil {
			return err
		}
		digest.Write(chunk.Data)
	}
	if hex.EncodeToString(digest.Sum(nil)) != file.Sha256 {
		return fmt.Errorf("%s: sha256 does not match the manifest; download it again", file.Path)
	}
	return os.Rename(partial, target)
}

// Deploy deploys version of model (0: the latest) and waits until it is READY.
func (c *Client) Deploy(ctx context.Context, model string, version int64, timeout time.Duration) (*v1.Deployment, error) {
	deployment, err := c.Deployments.CreateDeployment(ctx, &v1.CreateDeploymentRequest{
		Deployment: &v1.Deployment{Model: model, Version: version},
	})
	deadline := time.Now().Add(timeout)
	for err == nil && deployment.State != v1.DeploymentState_DEPLOYMENT_STATE_READY {
		if deployment.State == v1.DeploymentState_DEPLOYMENT_STATE_FAILED {
			return nil, fmt.Errorf("deploying %s failed: %v", model, deployment.Targets)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s was not READY after %s", model, timeout)
		}
		time.Sleep(250 * time.Millisecond)
		deployment, err = c.Deployments.GetDeployment(ctx, &v1.GetDeploymentRequest{Name: deployment.Name})
	}
	return deployment, err
}

// InferFP32 infers on model through the gateway with 1-D FP32 inputs and
// returns each output's values (raw outputs are little-endian bytes).
func (c *Client) InferFP32(ctx context.Context, model string, inputs map[string][]float32) (map[string][]float32, error) {
	request := &inference.ModelInferRequest{ModelName: model}
	names := make([]string, 0, len(inputs))
	for name := range inputs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		values := inputs[name]
		request.Inputs = append(request.Inputs, &inference.ModelInferRequest_InferInputTensor{
			Name: name, Datatype: "FP32", Shape: []int64{int64(len(values))},
		})
		raw := make([]byte, 4*len(values))
		for i, value := range values {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(value))
		}
		request.RawInputContents = append(request.RawInputContents, raw)
	}
	response, err := c.Gateway.ModelInfer(ctx, request)
	if err != nil {
		return nil, err
	}
	outputs := map[string][]float32{}
	for i, output := range response.Outputs {
		raw := response.RawOutputContents[i]
		values := make([]float32, len(raw)/4)
		for j := range values {
			values[j] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:]))
		}
		outputs[output.Name] = values
	}
	return outputs, nil
}
