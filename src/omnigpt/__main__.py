from omnigpt.cli.main import main

raise SystemExit(main())
