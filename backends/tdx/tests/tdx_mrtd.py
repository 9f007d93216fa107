# Copyright 2026 The veil authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""A second MRTD implementation for veil-tdx's cross-check, written from the TDX module
ABI's records: one running SHA-384 over TDH.MEM.PAGE.ADD (128 bytes: "MEM.PAGE.ADD",
GPA at 16) and, per 256-byte chunk of a measured page, TDH.MR.EXTEND (128 bytes:
"MR.EXTEND", the chunk's GPA at 16, then the chunk), page by page in the order added.

stdin: {"pages": [{"gpa": n, "measured": bool, "data": hex of 4096 bytes}]}
stdout: {"mrtd": hex}
"""
import hashlib
import json
import sys


def record(name, gpa):
    b = bytearray(128)
    b[0:len(name)] = name
    b[16:24] = gpa.to_bytes(8, "little")
    return bytes(b)


h = hashlib.sha384()
for p in json.load(sys.stdin)["pages"]:
    gpa, data = p["gpa"], bytes.fromhex(p["data"])
    assert len(data) == 4096
    h.update(record(b"MEM.PAGE.ADD", gpa))
    if p["measured"]:
        for i in range(16):
            h.update(record(b"MR.EXTEND", gpa + i * 256))
            h.update(data[i * 256:(i + 1) * 256])
json.dump({"mrtd": h.hexdigest()}, sys.stdout)
