from harken.cli import main

raise SystemExit(main())
