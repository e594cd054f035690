// Nothing to copy: proto files are read from <package root>/proto at run time.
// Kept as the build's post step so assets can be added in one place.
'use strict';
