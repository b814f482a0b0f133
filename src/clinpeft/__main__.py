from clinpeft.cli import main

raise SystemExit(main())
