// The Node client against a real MLServe and Triton, started by
// tests/client/test_node_client.py, which passes MLSERVE_ADDRESS, MLSERVE_KEY,
// MLSERVE_TOKEN (from a test issuer), MLSERVE_MODEL and MLSERVE_EXAMPLE (a copy
// of examples/add with a 5 MiB file added, so an upload takes several chunks).

import assert from "node:assert/strict";
import { mkdtemp, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";

import { CHUNK_BYTES, MLServe, grpc } from "../src/index.js";

const { MLSERVE_ADDRESS: address, MLSERVE_KEY: key, MLSERVE_TOKEN: token } = process.env;
const { MLSERVE_MODEL: model, MLSERVE_EXAMPLE: example } = process.env;

test("a key: interrupted upload resumed, download checked, deploy, infer", async () => {
  const client = new MLServe({ address, key });
  try {
    await client.listModels();
    // Interrupt an upload after its first chunk…
    const { files, manifest, config, uploadId } = await client.prepareUpload(model, example);
    const big = files.find((file) => file.size > CHUNK_BYTES);
    const first = (await readFile(big.absolute)).subarray(0, CHUNK_BYTES);
    const call = client.models.uploadModelVersion(() => {});
    call.write({ header: { model, uploadId, files: manifest, config } });
    call.write({ chunk: { path: big.path, offset: "0", data: first } });
    let held = new Map();
    while (!(held.get(big.path) > 0)) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      held = await client.receivedBytes(uploadId);
    }
    call.cancel();
    assert.equal(held.get(big.path), CHUNK_BYTES);
    // …and resume it: only the rest is sent.
    const version = await client.upload(model, example);
    assert.equal(version.model, model);
    assert.equal(version.uploadId, uploadId);
    assert.deepEqual(version.files.map((f) => f.sha256).sort(), manifest.map((f) => f.sha256).sort());
    assert.ok((await client.listModels()).some((m) => m.name === model));

    const destination = await mkdtemp(path.join(os.tmpdir(), "mlserve-node-"));
    await client.download(model, version.version, destination);
    assert.deepEqual(await readFile(path.join(destination, big.path)), await readFile(big.absolute));

    const deployment = await client.deploy(model, { version: version.version });
    assert.equal(deployment.state, "DEPLOYMENT_STATE_READY");
    const outputs = await client.inferFp32(model, { INPUT0: [1, 2, 3, 4], INPUT1: [10, 20, 30, 40] });
    assert.deepEqual(Array.from(outputs.OUTPUT0), [11, 22, 33, 44]);
    await client.undeploy(model);
  } finally {
    client.close();
  }
});

test("a token signs in; a wrong key is UNAUTHENTICATED", async () => {
  const signedIn = new MLServe({ address, token });
  try {
    await signedIn.listModels();
    const instance = await signedIn.getInstance();
    assert.ok(instance.authentication.methods.includes("oidc"));
  } finally {
    signedIn.close();
  }
  const wrong = new MLServe({ address, key: "mls_000000000000_wrong" });
  try {
    await assert.rejects(wrong.listModels(), (error) => error.code === grpc.status.UNAUTHENTICATED);
  } finally {
    wrong.close();
  }
});
