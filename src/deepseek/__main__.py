from deepseek.cli.main import main

raise SystemExit(main())
