from nsa.cli import main

raise SystemExit(main())
