"""Plot figure 1's distributions: spawn and stop time with and without the mesh, per setting.

    python benchmarks/fig1_spawn_overhead.py | tail -1 > benchmarks/fig1_spawn_overhead.json
    python benchmarks/plot_fig1.py [benchmarks/fig1_spawn_overhead.json] [-o benchmarks/fig1_spawn_overhead.png]

Needs matplotlib (`pip install matplotlib`; not a dependency of the package or its tests).
Reads the JSON line fig1 prints last (``plain_runs_s`` / ``mesh_runs_s`` per setting and phase).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = (("a_hub", "(a) real hub, jupyterhub-singleuser"), ("b_minimal", "(b) spawner alone, minimal notebook"))
PHASES = ("spawn", "stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_line", nargs="?", default=str(HERE / "fig1_spawn_overhead.json"))
    parser.add_argument("-o", "--output", default=str(HERE / "fig1_spawn_overhead.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = json.loads(Path(args.json_line).read_text().strip().splitlines()[-1])
    settings = [(key, title) for key, title in SETTINGS if key in line["results"]]
    fig, axes = plt.subplots(len(settings), 2, figsize=(10, 3.6 * len(settings)), squeeze=False)
    for row, (key, title) in enumerate(settings):
        for col, phase in enumerate(PHASES):
            ax = axes[row][col]
            result = line["results"][key][phase]
            data = [result["plain_runs_s"], result["mesh_runs_s"]]
            ax.boxplot(data, orientation="horizontal", widths=0.5, showfliers=False)
            for i, values in enumerate(data, start=1):
                # every run as a dot, jittered vertically by its order so equal times stay visible
                ax.scatter(values, [i + 0.15 * ((j % 5) - 2) / 2 for j in range(len(values))], s=14, alpha=0.7)
            ax.set_yticks([1, 2], ["DockerSpawner", "ConsulSpawner"])
            ax.set_xlabel("seconds")
            ax.set_xlim(left=0)
            ax.set_title(
                f"{title}: {phase}\nmedian {result['plain']['median']:.2f} s -> {result['mesh']['median']:.2f} s "
                f"(x{result['ratio_median']:.2f}, n={result['mesh']['n']})",
                fontsize=9,
            )
            ax.grid(axis="x", alpha=0.3)
    heading = f"Figure 1: spawn and stop with and without the mesh ({line['date']}, code {line['code']})"
    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(args.output)


if __name__ == "__main__":
    main()
