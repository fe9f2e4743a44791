#!/usr/bin/env python3
"""Small valid GGUF files (written by PyPI's `gguf`) that seed the fuzzer: fuzz/seeds/*.gguf.

    python3 scripts/make-fuzz-seeds.py
Each file holds metadata of every value type (nested arrays too) and tiny tensors of the types
webguard dequantises (F32, F16, Q8_0, Q4_1), so mutations start from deep inside the format.
"""
import pathlib

import gguf
import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "seeds"


def write(name, tensors, extra=True):
    OUT.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(OUT / name), "llama")
    if extra:
        w.add_uint8("t.u8", 7)
        w.add_int8("t.i8", -7)
        w.add_uint16("t.u16", 700)
        w.add_int16("t.i16", -700)
        w.add_uint32("t.u32", 70000)
        w.add_int32("t.i32", -70000)
        w.add_float32("t.f32", 0.5)
        w.add_uint64("t.u64", 2**40)
        w.add_int64("t.i64", -(2**40))
        w.add_float64("t.f64", 0.25)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "héllo ✓")
        w.add_array("t.arr", ["a", "bc", ""])
        w.add_array("t.nested", [[1, 2], [3]])
    for tname, arr, qtype in tensors:
        if qtype is None:
            w.add_tensor(tname, arr)
        else:
            w.add_tensor(tname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


rng = np.random.default_rng(1)
m = rng.standard_normal((2, 64)).astype(np.float32)
write("all_types.gguf", [
    ("f32", rng.standard_normal((3, 4)).astype(np.float32), None),
    ("f16", rng.standard_normal((2, 8)).astype(np.float16), None),
    ("q8_0", m, gguf.GGMLQuantizationType.Q8_0),
    ("q4_1", m, gguf.GGMLQuantizationType.Q4_1),
])
write("metadata_only.gguf", [])
write("one_tensor.gguf", [("w", np.arange(8, dtype=np.float32), None)], extra=False)
for p in sorted(OUT.glob("*.gguf")):
    print(p.name, p.stat().st_size)
