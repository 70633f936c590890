"""GPU check of the runtime's refusals: each bad case must raise one fdpp error with a clear one-line message.

    python scripts/gpu_error_paths.py --wrong-vendor a.fdpp --huge-batch b.fdpp --ok c.fdpp [--older-arch d.fdpp]
"""

from __future__ import annotations

import argparse
import sys

import fdpp


def _expect_error(label: str, action) -> bool:
    try:
        action()
    except fdpp.FdppError as e:
        print(f"PASS {label}: {type(e).__name__}: {e}")
        return True
    except Exception as e:  # anything else is a defect: the user would see a traceback
        print(f"FAIL {label}: {type(e).__name__}: {e}")
        return False
    print(f"FAIL {label}: no error")
    return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wrong-vendor", required=True)
    ap.add_argument("--huge-batch", required=True)
    ap.add_argument("--ok", required=True)
    ap.add_argument("--older-arch")
    args = ap.parse_args()
    ok = _expect_error("bundle for another vendor", lambda: fdpp.load(args.wrong_vendor, device="cuda"))
    ok &= _expect_error("KV cache larger than the GPU",
                        lambda: fdpp.load(args.huge_batch, device="cuda").generate([[1, 2, 3]], max_new_tokens=2))
    model = fdpp.load(args.ok, device="cuda")
    limit = model.envelope.max_seq_len
    ok &= _expect_error("prompt longer than max sequence", lambda: model.generate([[5] * (limit + 1)], max_new_tokens=1))
    ok &= _expect_error("batch above max batch",
                        lambda: model.generate([[5, 6]] * (model.envelope.max_batch + 1), max_new_tokens=1))
    if args.older_arch:
        older = fdpp.load(args.older_arch, device="cuda")      # sm_80 code on a newer GPU: through its PTX
        out = older.generate([[5, 6, 7]], max_new_tokens=4).token_ids
        ref = model.generate([[5, 6, 7]], max_new_tokens=4).token_ids
        print(("PASS" if out == ref else "FAIL") + f" sm_80 bundle on this GPU via PTX: {out} vs sm_90 {ref}")
        ok &= out == ref
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
