package vault

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// TestDocComments fails when the package, or any exported name in it, has
// no doc comment.
func TestDocComments(t *testing.T) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, e.Name(), nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	p, err := doc.NewFromFiles(fset, files, "github.com/sallyport/sallyport/vault")
	if err != nil {
		t.Fatal(err)
	}
	if p.Doc == "" {
		t.Error("package vault has no doc comment")
	}
	missing := func(kind, name, text string) {
		if strings.TrimSpace(text) == "" {
			t.Errorf("%s %s has no doc comment", kind, name)
		}
	}
	values := func(vs []*doc.Value) {
		for _, v := range vs {
			if v.Doc != "" {
				continue
			}
			for _, spec := range v.Decl.Specs {
				vs := spec.(*ast.ValueSpec)
				for _, n := range vs.Names {
					if n.IsExported() && vs.Doc.Text() == "" && vs.Comment.Text() == "" {
						t.Errorf("%s has no doc comment", n.Name)
					}
				}
			}
		}
	}
	values(p.Consts)
	values(p.Vars)
	for _, f := range p.Funcs {
		missing("func", f.Name, f.Doc)
	}
	for _, typ := range p.Types {
		missing("type", typ.Name, typ.Doc)
		values(typ.Consts)
		values(typ.Vars)
		for _, f := range typ.Funcs {
			missing("func", f.Name, f.Doc)
		}
		for _, m := range typ.Methods {
			missing("method", typ.Name+"."+m.Name, m.Doc)
		}
	}
}
