"""Packaging for neuronb; every setting lives in settings.ini (nbdev 2)."""
from configparser import ConfigParser
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license='Apache Software License 2.0',
    url=cfg['git_url'],
    classifiers=['Development Status :: 3 - Alpha', 'Intended Audience :: Developers',
                 'License :: OSI Approved :: Apache Software License', 'Natural Language :: English',
                 'Programming Language :: Python :: 3.11', 'Framework :: Jupyter'],
    packages=setuptools.find_packages(include=['neuronb', 'neuronb.*']),
    package_data={'neuronb': ['templates/**/*', 'templates/**/.gitignore']},
    install_requires=cfg.get('requirements', '').split(),
    extras_require={'dev': cfg.get('dev_requirements', '').split()},
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
