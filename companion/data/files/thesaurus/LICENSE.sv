sv.tsv.xz is a processed subset of /usr/share/mythes/th_sv_SE_v2.dat from the Debian package
mythes-sv 1:7.5.0-1 (a LibreOffice thesaurus), made by scripts/build_shipped_data.py:
the senses of the 6,000 most frequent single-word headwords, at most 16 terms per sense,
usage labels removed. This is a modified copy of that file.
Copyright and licence, verbatim from /usr/share/doc/mythes-sv/copyright (the paragraphs for dictionaries/sv_SE/th_sv_SE.dat); the full texts of the
LGPL versions referred to are in this folder (LGPL-2.1.txt, LGPL-3.txt):

Files: dictionaries/sv_SE/th_sv_SE.dat
       dictionaries/sv_SE/README_th_sv_SE.txt
Copyright: 2009 Viggo Kann
License: custom2
 THIS MATERIAL IS PROVIDED AS IS, WITH ABSOLUTELY NO WARRANTY EXPRESSED
 OR IMPLIED.  ANY USE IS AT YOUR OWN RISK.
 .
 Permission is hereby granted to use or copy this program
 for any purpose,  provided the above notices are retained on all copies.
 Permission to modify the code and to distribute modified code is granted,
 provided the above notices are retained, and a notice that the code was
 modified is included with the above copyright notice.
