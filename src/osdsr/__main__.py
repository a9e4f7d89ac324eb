from osdsr.cli import main

raise SystemExit(main())
