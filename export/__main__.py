import sys

from ltcompress.edge.runtime import main

sys.exit(main())
