from vislab.cli import main

raise SystemExit(main())
