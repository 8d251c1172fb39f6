es.tsv.xz is a processed subset of /usr/share/mythes/th_es_ES_v2.dat from the Debian package
mythes-es 1:7.5.0-1 (a LibreOffice thesaurus), made by scripts/build_shipped_data.py:
the senses of the 6,000 most frequent single-word headwords, at most 16 terms per sense,
usage labels removed. This is a modified copy of that file.
Copyright and licence, verbatim from /usr/share/doc/mythes-es/copyright (the paragraphs for dictionaries/es/th_es_ANY_v2.dat); the full texts of the
LGPL versions referred to are in this folder (LGPL-2.1.txt, LGPL-3.txt):

Files: dictionaries/es/th_es_ANY_v2.dat
       dictionaries/es/README_th_es_ANY.txt
Copyright: Marcelo Garrone <mgarrone@users.sf.net>
License: LGPL-2.1

License: LGPL-2.1
 This program is free software; you can redistribute it and/or modify
 it under the terms of the GNU Lesser General Public License as published by
 the Free Software Foundation; version 2.1.
 .
 This program is distributed in the hope that it will be useful,
 but WITHOUT ANY WARRANTY; without even the implied warranty of
 MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
 GNU Lesser General Public License for more details.
 .
 You should have received a copy of the GNU Lesser General Public License along
 with this program; if not, write to the Free Software Foundation,
 Inc., 51 Franklin Street, Fifth Floor, Boston, MA 02110-1301, USA.
 .
 On Debian systems, the complete text of the GNU Lesser General Public
 License version 2.1 can be found in ‘/usr/share/common-licenses/LGPL-2.1’.
