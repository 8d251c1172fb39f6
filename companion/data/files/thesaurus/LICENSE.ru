ru.tsv.xz is a processed subset of /usr/share/mythes/th_ru_RU_v2.dat from the Debian package
mythes-ru 1:7.5.0-1 (a LibreOffice thesaurus), made by scripts/build_shipped_data.py:
the senses of the 6,000 most frequent single-word headwords, at most 16 terms per sense,
usage labels removed. This is a modified copy of that file.
Copyright and licence, verbatim from /usr/share/doc/mythes-ru/copyright (the paragraphs for dictionaries/ru_RU/th_ru_RU_M_aot_and_v2.dat); the full texts of the
LGPL versions referred to are in this folder (LGPL-2.1.txt, LGPL-3.txt):

Files: dictionaries/ru_RU/th_ru_RU_M_aot_and_v2.dat
       dictionaries/ru_RU/README_thes_ru_RU_M_aot_and_v2.txt
Copyright: Mikhail Korolyov <mkorolyov@yandex.ru>
           Yakov Reztsov <yr@myooo.ru>
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
