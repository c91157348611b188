"""The full benchmark run whose output is benchmarks/RESULTS.md.

    python benchmarks/run_all.py                    # full sweep (tens of minutes, 2 cores)
    python benchmarks/run_all.py --quick            # the same files from a ~1 minute run
    python benchmarks/run_all.py --from-json F      # only regenerate RESULTS.md from F

writes, into --out (default: this folder): results.json, kernels.png, kernels_roofline.png
and RESULTS.md. Run it on a quiet machine: the run records the load average and the CPU time
stolen by the hypervisor, and says so in RESULTS.md when the host was busy. Everything it
does is in the package (tinyllm.bench); this script only names the files.
"""
import argparse
import json
import os
import sys

from tinyllm.bench import BenchUsageError, report, run

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=HERE, help="folder for the four files (default: %(default)s)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--from-json", metavar="FILE", help="skip measuring; rewrite RESULTS.md "
                   "from a results.json")
    args = p.parse_args(argv)
    md = os.path.join(args.out, "RESULTS.md")
    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    try:
        if args.from_json:
            with open(args.from_json) as f:
                result = json.load(f)
        else:
            result = run(quick=args.quick, threads=args.threads, torch=not args.no_torch,
                         json_path=os.path.join(args.out, "results.json"),
                         plot_path=os.path.join(args.out, "kernels.png"), command=command)
        with open(md, "w") as f:
            f.write(report.markdown(result, result.get("command", command)))
    except (BenchUsageError, OSError) as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
