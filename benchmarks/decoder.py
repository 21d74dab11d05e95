"""SmolLM2-135M (the embedded decoder) at decode-speedup targets 1.5x, 2x and 3x.

benchmarks/searchers.py with the decoder's arguments: dense, dense int8 weights (the
no-effort alternative), uniform, random, evolutionary and PPO on equal evaluations, each
searcher's plan recovered and timed side by side: decode and prefill speedups against
dense PyTorch fp32, held-out KL and perplexity. Any of searchers.py's options may follow
(they override these), e.g. --seeds 0,1,2.

    python benchmarks/decoder.py [--targets 1.5,2,3] [--seeds 0]
"""

from __future__ import annotations

import sys

from searchers import main

DECODER_ARGUMENTS = ["--model", "smollm2", "--targets", "1.5,2,3", "--seeds", "0", "--name", "decoder"]

if __name__ == "__main__":
    sys.argv[1:1] = DECODER_ARGUMENTS
    sys.exit(main())
