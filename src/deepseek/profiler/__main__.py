"""``python -m deepseek.profiler --model NAME --batch_size B --output_dir DIR ...`` (see :mod:`deepseek.profiler.cli`)."""

from deepseek.profiler.cli import main

raise SystemExit(main())
