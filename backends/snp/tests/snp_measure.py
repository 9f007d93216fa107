# Copyright 2026 The veil authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Second implementation for veil-snp's cross-check tests: sev-snp-measure 0.0.13.

Reads a JSON request on stdin and prints a JSON answer.
  {"op": "digest", "pages": [{"gpa": n, "type": "normal|zero|unmeasured|secrets|cpuid|vmsa",
                              "data": hex (normal and vmsa)}]}
      -> {"digest": hex, "sha384": [hex or null per page]}   (GCTX, page by page)
  {"op": "vmsa", "eip": n, "sev_features": n, "vcpu_sig": n, "vmm": "QEMU|ec2|gce"}
      -> {"vmsa": hex}                                         (VMSA.build_save_area)
"""
import hashlib
import json
import sys

from sevsnpmeasure.gctx import GCTX


def digest(pages):
    g = GCTX()
    hashes = []
    for p in pages:
        t, gpa = p["type"], p["gpa"]
        data = bytes.fromhex(p["data"]) if "data" in p else None
        hashes.append(hashlib.sha384(data).hexdigest() if data is not None else None)
        if t == "normal":
            g.update_normal_pages(gpa, data)
        elif t == "vmsa":
            g.update_vmsa_page(data)
        elif t == "zero":
            g.update_zero_pages(gpa, 4096)
        elif t == "unmeasured":
            g.update_unmeasured_pages(gpa, 4096)
        elif t == "secrets":
            g.update_secrets_page(gpa)
        elif t == "cpuid":
            g.update_cpuid_page(gpa)
        else:
            raise ValueError(t)
    return {"digest": g.hex_ld(), "sha384": hashes}


def vmsa(req):
    from sevsnpmeasure.vmsa import VMSA
    from sevsnpmeasure.vmm_types import VMMType
    area = VMSA.build_save_area(req["eip"], req["sev_features"], req["vcpu_sig"],
                                VMMType[req["vmm"]])
    return {"vmsa": bytes(area).hex()}


req = json.load(sys.stdin)
out = digest(req["pages"]) if req["op"] == "digest" else vmsa(req)
json.dump(out, sys.stdout)
