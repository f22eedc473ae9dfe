from agentcomm.cli import main

raise SystemExit(main())
