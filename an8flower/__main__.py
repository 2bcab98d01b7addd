from an8flower.cli import main

raise SystemExit(main())
