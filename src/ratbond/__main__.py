from ratbond.cli import main

raise SystemExit(main())
