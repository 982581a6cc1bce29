#!/usr/bin/env python3
"""Writes a single-platform OCI image archive (an OCI image layout in a tar) from directories.

No container daemon, no registry, standard library only. The output is importable with
`ctr -n k8s.io images import ARCHIVE` (containerd reads the `io.containerd.image.name` annotation of
the index) and also carries a Docker-style `manifest.json`, so `docker load`/`podman load` accept it.

Deterministic: every tar entry has the same mtime (--mtime), uid/gid 0 and no user/group names,
entries are sorted by path, gzip headers carry no name and mtime 0. The same inputs give the same
layer, config, manifest and archive digests.

Usage:
  oci-image.py --name localhost/strait-agent:0.1.0 --out agent.tar \
      --layer ROOTFS_BASE --layer ROOTFS_APP \
      --entrypoint /usr/local/bin/strait-agent --user 0:0 --env PATH=/usr/bin:/bin [--mtime 0]
Prints one JSON line: name, manifest digest, per-layer compressed sizes, archive size.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile


def layer_tar(root: str, mtime: int) -> bytes:
    """An uncompressed, deterministic tar of the tree under root (paths relative to root)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            entries.append(os.path.relpath(full, root))
    entries.sort()
    buf = io.BytesIO()
    seen_inodes = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in entries:
            full = os.path.join(root, rel)
            st = os.lstat(full)
            ti = tarfile.TarInfo(rel)
            ti.mtime = mtime
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(full)
                tar.addfile(ti)
            elif stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    # a hard link to an entry already written (sorted order makes this stable)
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = seen_inodes[key]
                    tar.addfile(ti)
                    continue
                seen_inodes[key] = rel
                ti.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(ti, f)
            else:
                sys.exit(f"oci-image.py: unsupported file type: {full}")
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as g:
        g.write(data)
    return out.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True, help="full reference, e.g. localhost/strait-agent:0.1.0")
    p.add_argument("--out", required=True)
    p.add_argument("--layer", action="append", required=True, help="directory, in layer order")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir", default="/")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--mtime", type=int, default=0, help="mtime of every entry (seconds)")
    a = p.parse_args()

    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    blobs = {}  # digest -> bytes
    layers, diff_ids = [], []
    for d in a.layer:
        raw = layer_tar(d, a.mtime)
        comp = gz(raw)
        diff_ids.append(sha(raw))
        dg = sha(comp)
        blobs[dg] = comp
        layers.append({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": dg,
            "size": len(comp),
        })

    created = datetime.datetime.fromtimestamp(a.mtime, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    cfg = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": a.env,
            "WorkingDir": a.workdir,
            "Labels": dict(kv.split("=", 1) for kv in a.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": f"strait oci-image.py layer {i}"}
                    for i in range(len(layers))],
    }
    if a.entrypoint:
        cfg["config"]["Entrypoint"] = a.entrypoint
    if a.cmd:
        cfg["config"]["Cmd"] = a.cmd
    if a.user:
        cfg["config"]["User"] = a.user
    if cfg["config"]["Labels"] is None:
        del cfg["config"]["Labels"]
    cfg_b = canonical(cfg)
    cfg_d = sha(cfg_b)
    blobs[cfg_d] = cfg_b

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d,
                   "size": len(cfg_b)},
        "layers": layers,
    }
    man_b = canonical(manifest)
    man_d = sha(man_b)
    blobs[man_d] = man_b

    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_d,
            "size": len(man_b),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": a.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }
    docker_manifest = [{
        "Config": "blobs/sha256/" + cfg_d.split(":")[1],
        "RepoTags": [a.name],
        "Layers": ["blobs/sha256/" + l["digest"].split(":")[1] for l in layers],
    }]

    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical(index),
        "manifest.json": canonical(docker_manifest),
    }
    for dg, data in blobs.items():
        files["blobs/sha256/" + dg.split(":")[1]] = data

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dname in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(dname)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, a.mtime
            tar.addfile(ti)
        for path in sorted(files):
            data = files[path]
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, a.mtime
            tar.addfile(ti, io.BytesIO(data))
    os.replace(tmp, a.out)
    print(json.dumps({
        "name": a.name,
        "manifest": man_d,
        "config": cfg_d,
        "layers_compressed_bytes": [l["size"] for l in layers],
        "compressed_bytes": sum(l["size"] for l in layers) + len(cfg_b) + len(man_b),
        "archive_bytes": os.path.getsize(a.out),
    }))


if __name__ == "__main__":
    main()
