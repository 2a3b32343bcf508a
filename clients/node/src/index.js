// A small Node client for MLServe, on @grpc/grpc-js and @grpc/proto-loader:
// connect with an API key or an OIDC token, list models, upload a model folder
// (resumable, with a sha256 manifest), download a version (checked against its
// manifest), deploy, and infer through MLServe's gateway (Triton's protocol).
//
// The protos are read from the repository: protos/ (mlserve.v1) and
// generated/triton/ (Triton's grpc_service.proto, vendored). Pass protoRoot
// when the client lives elsewhere.

import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { mkdir, open, readdir, readFile, rename, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const REPOSITORY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const CHUNK_BYTES = 2 * 1024 * 1024; // MLServe takes at most 4 MiB per chunk

// The proto-loader options that matter: int64 as decimal strings (a JS number
// loses precision above 2^53), enums by name ("DEPLOYMENT_STATE_READY"), unset
// fields as their defaults (0, "", []), and which oneof member is set.
export const LOADER_OPTIONS = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** Loads mlserve.v1 and Triton's inference package. */
export function loadProtos(protoRoot = REPOSITORY) {
  const protos = path.join(protoRoot, "protos");
  const triton = path.join(protoRoot, "generated", "triton");
  const files = [
    "mlserve/v1/model.proto",
    "mlserve/v1/deployment.proto",
    "mlserve/v1/instance.proto",
    "grpc_service.proto",
  ];
  const definition = protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [protos, triton] });
  return grpc.loadPackageDefinition(definition);
}

/** Adds `authorization: Bearer <key or token>` to every call (works on plaintext channels). */
function bearer(credential) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${credential}`);
        next(metadata, listener);
      },
    });
}

/** Turns a grpc-js callback method into a promise. */
function unary(client, method, request, options = {}) {
  return new Promise((resolve, reject) => {
    client[method](request, options, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

export class MLServe {
  /**
   * @param {object} options
   * @param {string} [options.address] host:port (default $MLSERVE_ADDRESS or 127.0.0.1:50051)
   * @param {string} [options.key] an API key (mls_…)
   * @param {string} [options.token] an OIDC token from an issuer MLServe trusts
   * @param {Buffer} [options.ca] a PEM CA certificate: connect with TLS
   * @param {string} [options.protoRoot] the folder holding protos/ and generated/triton/
   */
  constructor({ address, key, token, ca, protoRoot } = {}) {
    const credential = token ?? key;
    if (!credential) throw new Error("give an API key (key) or an OIDC token (token)");
    if (key && token) throw new Error("give an API key or a token, not both");
    this.address = address ?? process.env.MLSERVE_ADDRESS ?? "127.0.0.1:50051";
    const packages = loadProtos(protoRoot);
    const channel = ca ? grpc.credentials.createSsl(ca) : grpc.credentials.createInsecure();
    const options = {
      interceptors: [bearer(credential)],
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
    };
    const v1 = packages.mlserve.v1;
    this.models = new v1.ModelService(this.address, channel, options);
    this.deployments = new v1.DeploymentService(this.address, channel, options);
    this.instance = new v1.InstanceService(this.address, channel, options);
    this.gateway = new packages.inference.GRPCInferenceService(this.address, channel, options);
    this.scope = createHash("sha256").update(credential.split("_")[1] ?? credential).digest("hex");
  }

  close() {
    for (const client of [this.models, this.deployments, this.instance, this.gateway]) client.close();
  }

  getInstance() {
    return unary(this.instance, "getInstance", {});
  }

  /** Every model the caller may see, through all pages. */
  async listModels() {
    const models = [];
    let pageToken = "";
    do {
      const page = await unary(this.models, "listModels", { pageSize: 100, pageToken });
      models.push(...page.models);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return models;
  }

  /**
   * Upload a model folder as a new version of `model` (created when missing).
   * The folder holds config.pbtxt (optional) and either the version's files or
   * one numbered folder of them (Triton's layout). Resumable: the upload id is
   * derived from the manifest, so calling again after an interruption sends
   * only what MLServe has not stored (GetUpload says how far each file got).
   * ABORTED means another stream holds this upload — often one just
   * interrupted, which the server is still closing — so the call tries again,
   * resuming from what that stream stored, for up to `abortedRetrySeconds`.
   * @returns the ModelVersion made (or the existing one for identical content)
   */
  async upload(model, folder, { abortedRetrySeconds = 15 } = {}) {
    const deadline = Date.now() + abortedRetrySeconds * 1000;
    for (let pause = 100; ; pause = Math.min(pause * 2, 2000)) {
      try {
        return await this.#uploadOnce(model, folder);
      } catch (error) {
        if (error.code !== grpc.status.ABORTED || Date.now() + pause > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
    }
  }

  async #uploadOnce(model, folder) {
    const { files, config, manifest, uploadId } = await this.prepareUpload(model, folder);
    const received = await this.receivedBytes(uploadId);
    return new Promise((resolve, reject) => {
      const call = this.models.uploadModelVersion((error, version) => (error ? reject(error) : resolve(version)));
      call.write({ header: { model, uploadId, files: manifest, config } });
      (async () => {
        for (const file of files) {
          let offset = received.get(file.path) ?? 0;
          if (offset >= file.size && file.size > 0) continue;
          if (file.size === 0) {
            await writeChunk(call, { path: file.path, offset: "0", data: Buffer.alloc(0) });
            continue;
          }
          const stream = createReadStream(file.absolute, { start: offset, highWaterMark: CHUNK_BYTES });
          for await (const data of stream) {
            await writeChunk(call, { path: file.path, offset: String(offset), data });
            offset += data.length;
          }
        }
        call.end();
      })().catch((error) => {
        call.cancel();
        reject(error);
      });
    });
  }

  /** What upload() sends for `folder`: its files, config, manifest and the derived upload id. */
  async prepareUpload(model, folder) {
    const { files, config } = await readModelFolder(folder);
    const manifest = files.map(({ path: p, size, sha256 }) => ({ path: p, size: String(size), sha256 }));
    return { files, config, manifest, uploadId: deriveUploadId(model, config, manifest, this.scope) };
  }

  /** path -> bytes MLServe already holds for upload `uploadId` (empty when it has none). */
  async receivedBytes(uploadId) {
    try {
      const upload = await unary(this.models, "getUpload", { uploadId });
      return new Map(upload.files.map((file) => [file.path, Number(file.receivedBytes)]));
    } catch (error) {
      if (error.code === grpc.status.NOT_FOUND) return new Map();
      throw error;
    }
  }

  /**
   * Download a version's files into `destination`, each checked against the
   * version's sha256 manifest before it takes its name (a .part file until then).
   * @returns the ModelVersion downloaded
   */
  async download(model, version, destination) {
    const described = await unary(this.models, "getModelVersion", { model, version: String(version ?? 0) });
    for (const file of described.files) {
      const target = safeJoin(destination, file.path);
      await mkdir(path.dirname(target), { recursive: true });
      const partial = `${target}.part`;
      const handle = await open(partial, "w");
      const digest = createHash("sha256");
      try {
        const call = this.models.downloadModelVersion({ model, version: described.version, path: file.path });
        for await (const chunk of call) {
          await handle.write(chunk.data, 0, chunk.data.length, Number(chunk.offset));
          digest.update(chunk.data);
        }
      } finally {
        await handle.close();
      }
      if (digest.digest("hex") !== file.sha256) {
        throw new Error(`${file.path}: sha256 does not match the manifest; download it again`);
      }
      await rename(partial, target);
    }
    return described;
  }

  /**
   * Deploy `model` (version 0: the latest) and wait until READY.
   * @returns the Deployment once READY; rejects when it FAILED or timed out
   */
  async deploy(model, { version = 0, timeoutSeconds = 120 } = {}) {
    let deployment = await unary(this.deployments, "createDeployment", {
      deployment: { model, version: String(version) },
    });
    const deadline = Date.now() + timeoutSeconds * 1000;
    while (deployment.state !== "DEPLOYMENT_STATE_READY") {
      if (deployment.state === "DEPLOYMENT_STATE_FAILED") {
        const why = deployment.targets.map((target) => target.message).join("; ");
        throw new Error(`deploying ${model} failed: ${why}`);
      }
      if (Date.now() > deadline) throw new Error(`${model} was not READY after ${timeoutSeconds} s`);
      await new Promise((resolve) => setTimeout(resolve, 250));
      deployment = await unary(this.deployments, "getDeployment", { name: deployment.name });
    }
    return deployment;
  }

  undeploy(name) {
    return unary(this.deployments, "deleteDeployment", { name });
  }

  /**
   * Infer through the gateway (Triton's ModelInfer) with FP32 inputs.
   * @param {Record<string, number[]>} inputs name -> values (1-D)
   * @returns {Promise<Record<string, Float32Array>>} output name -> values
   */
  async inferFp32(model, inputs) {
    const names = Object.keys(inputs);
    const response = await unary(this.gateway, "modelInfer", {
      modelName: model,
      inputs: names.map((name) => ({ name, datatype: "FP32", shape: [String(inputs[name].length)] })),
      rawInputContents: names.map((name) => Buffer.from(new Float32Array(inputs[name]).buffer)),
    });
    // Raw outputs are little-endian bytes, one buffer per output, in order.
    const outputs = {};
    response.outputs.forEach((output, index) => {
      const raw = response.rawOutputContents[index];
      outputs[output.name] = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
    });
    return outputs;
  }
}

function writeChunk(call, chunk) {
  return new Promise((resolve) => {
    if (call.write({ chunk })) resolve();
    else call.once("drain", resolve);
  });
}

/** The upload id MLServe's Python client would not collide with: per caller and content. */
function deriveUploadId(model, config, manifest, scope) {
  const text = [model, config, ...manifest.map((f) => `${f.path}\n${f.size}\n${f.sha256}`), scope].join("\n");
  return "n-" + createHash("sha256").update(text).digest("hex").slice(0, 40);
}

/** A model folder's config.pbtxt and files (from its one numbered folder, when it has one). */
export async function readModelFolder(folder) {
  const configPath = path.join(folder, "config.pbtxt");
  const config = existsSync(configPath) ? await readFile(configPath, "utf8") : "";
  const entries = (await readdir(folder, { withFileTypes: true })).filter((e) => e.name !== "config.pbtxt");
  const numbered = entries.filter((e) => e.isDirectory() && /^\d+$/.test(e.name));
  const root = numbered.length === 1 && entries.length === 1 ? path.join(folder, numbered[0].name) : folder;
  const files = [];
  for (const absolute of await walk(root)) {
    const digest = createHash("sha256");
    for await (const data of createReadStream(absolute)) digest.update(data);
    files.push({
      absolute,
      path: path.relative(root, absolute).split(path.sep).join("/"),
      size: (await stat(absolute)).size,
      sha256: digest.digest("hex"),
    });
  }
  files.sort((a, b) => (a.path < b.path ? -1 : 1));
  return { files, config };
}

async function walk(folder) {
  const found = [];
  for (const entry of await readdir(folder, { withFileTypes: true })) {
    const absolute = path.join(folder, entry.name);
    if (entry.isDirectory()) found.push(...(await walk(absolute)));
    else if (entry.isFile()) found.push(absolute);
  }
  return found;
}

/** `relative` under `root`, refusing paths that would leave it. */
function safeJoin(root, relative) {
  const target = path.resolve(root, relative);
  if (!target.startsWith(path.resolve(root) + path.sep)) {
    throw new Error(`refusing ${relative}: it leaves the download folder`);
  }
  return target;
}

export { grpc };
